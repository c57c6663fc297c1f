"""Slide-encoder specs: plain, frozen data describing a slide (or patient) encoder (no torch).

A slide encoder turns the tile features of one slide (N, D) and their level-0 coordinates
(N, 2) into one vector. Its spec says which tile extractor and tile geometry it was trained
on, what its architecture is (``family`` + ``build``), where its weights live and under which
licence. Licence-split distributions export these specs from the module of their
``slideflow.extractors`` entry point, as a ``slide_encoder_specs`` callable next to the tile
``specs`` (one entry-point group serves both kinds; see `registry`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..extractors.spec import NO_WEIGHTS, WeightsSource

LEVELS = ("slide", "patient")

POSITIONAL = ("none", "grid", "level0")


def tile_microns(tile_px: int | None, tile_um: Any) -> float | None:
    """Physical tile width in microns for a ('20x' | microns) tile_um; None when unknown."""
    if tile_px is None or tile_um is None:
        return None
    if isinstance(tile_um, str):
        text = tile_um.strip().lower()
        if text.endswith("x"):
            return float(tile_px) * 10.0 / float(text[:-1])
        return float(text)
    return float(tile_um)


@dataclass(frozen=True)
class SlideEncoderSpec:
    """Everything known about a slide encoder before building it.

    tile_extractor: registry name of the tile extractor whose features it reads (None: any).
    tile_features: the tile feature width it expects (None: any, e.g. mean pooling).
    tile_px / tile_um: the tile geometry it was trained on (None: any); with
        ``geometry_strict`` a bag of another geometry is refused rather than used.
    positional: how coordinates enter the model ('none'; 'grid' = level-0 corners divided
        by patch_size_level0, the tile extent in level-0 pixels; 'level0' = level-0 corners
        binned by the model itself, e.g. GigaPath's floor(xy / 256)).
    checkpoint_parts: ((checkpoint key, prefix), ...) for checkpoints that keep several state
        dicts side by side (MOOZY's ``teacher_slide_encoder`` + ``case_transformer``): each
        is loaded under its prefix.
    slideflow_pair: ``build_feature_extractor(tile_extractor)`` returns the two-stage
        (tile + slide) object, as Slideflow 3 does for 'gigapath'.
    """

    name: str
    family: str
    dim: int | None
    license: str
    tile_extractor: str | None = None
    tile_features: int | None = None
    tile_px: int | None = None
    tile_um: Any = None
    geometry_strict: bool = False
    positional: str = "none"
    level: str = "slide"
    citation: str = ""
    aliases: tuple[str, ...] = ()
    weights: WeightsSource = NO_WEIGHTS
    gated: bool = False
    distribution: str = "slideflow"
    build: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)
    builder: str | None = None
    checkpoint_keys: tuple[str, ...] = ("state_dict", "model", "model_state_dict")
    strip_prefixes: tuple[str, ...] = ("module.",)
    expected_missing: tuple[str, ...] = ()
    expected_unexpected: tuple[str, ...] = ()
    checkpoint_parts: tuple[tuple[str, str], ...] = ()
    slideflow_pair: bool = False
    description: str = ""
    reference: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"invalid slide encoder name {self.name!r}")
        if self.level not in LEVELS:
            raise ValueError(f"{self.name}: level must be one of {LEVELS}")
        if self.positional not in POSITIONAL:
            raise ValueError(f"{self.name}: positional must be one of {POSITIONAL}")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "checkpoint_parts",
                           tuple(tuple(p) for p in self.checkpoint_parts))
        if isinstance(self.weights, Mapping):
            object.__setattr__(self, "weights", WeightsSource(**dict(self.weights)))

    @property
    def tile_microns(self) -> float | None:
        return tile_microns(self.tile_px, self.tile_um)

    def with_(self, **changes: Any) -> SlideEncoderSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["build"] = dict(self.build)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlideEncoderSpec:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown SlideEncoderSpec fields: {sorted(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class ExternalSlideEntry:
    """A slide encoder living in a distribution that may not be installed."""

    name: str
    distribution: str
    install: str
    license: str
    dim: int
    tile_extractor: str
