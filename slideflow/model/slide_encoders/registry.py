"""Which slide encoders exist: core specs, installed distributions, runtime registrations.

Answers without importing torch. Distributions export slide-encoder specs through the SAME
entry-point group as tile extractors (``slideflow.extractors``): the module an entry point
names may define ``slide_encoder_specs()`` beside its tile ``specs()``. One group keeps the
installed metadata unchanged (a new group would need every plug-in reinstalled) and keeps
"installing a distribution" one act for both kinds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from ...errors import SlideEncoderNotFound
from ..extractors.registry import GROUP
from ..plugins import entry_point_items
from ..spec_registry import SpecRegistry, did_you_mean, normalize
from .catalog import EXTERNAL
from .catalog import slide_encoder_specs as core
from .families import family_builder, import_failures
from .spec import ExternalSlideEntry, SlideEncoderSpec

log = logging.getLogger(__name__)

ATTRIBUTE = "slide_encoder_specs"


def _discover_installed(errors: MutableMapping[str, str]) -> dict[str, SlideEncoderSpec]:
    """The core catalog, then the slide encoders of installed distributions (which win)."""
    found = {normalize(s.name): s for s in core()}
    for _, spec in entry_point_items(GROUP, errors=errors, attribute=ATTRIBUTE,
                                     convert=SLIDE_ENCODERS.coerce, what="slide encoder"):
        found[normalize(spec.name)] = spec
    return found


#: the slide-encoder registry (specs, plugins, builders); the functions below are its API
SLIDE_ENCODERS: SpecRegistry[SlideEncoderSpec] = SpecRegistry(
    kind="slide encoder", discover=_discover_installed, spec_type=SlideEncoderSpec,
    not_found=SlideEncoderNotFound, family_builder=family_builder,
    import_failures=import_failures, register_call="register_slide_encoder")
_load_errors = SLIDE_ENCODERS.load_errors


def refresh() -> None:
    SLIDE_ENCODERS.refresh()


def _all() -> dict[str, SlideEncoderSpec]:
    return SLIDE_ENCODERS.specs()


def _external() -> dict[str, ExternalSlideEntry]:
    return {normalize(e.name): e for e in EXTERNAL}


def get_slide_spec(name: str) -> SlideEncoderSpec:
    """The spec registered under `name` or an alias; errors name the distribution to install."""
    if not isinstance(name, str) or not name.strip():
        raise SlideEncoderNotFound(f"slide encoder name must be a non-empty string, got {name!r}")
    key = normalize(name)
    if key.endswith(".slide"):  # Slideflow's 'gigapath.slide'
        key = key[: -len(".slide")]
    specs = _all()
    spec = SLIDE_ENCODERS.find(key, specs)
    if spec is not None:
        return spec
    ext = _external().get(key)
    if ext is not None:
        raise SlideEncoderNotFound(
            f"slide encoder {ext.name!r} lives in the {ext.distribution!r} distribution "
            f"(licence: {ext.license}), which is not installed. Install it with:\n"
            f"    {ext.install}")
    names = sorted({s.name for s in specs.values()} | {e.name for e in _external().values()})
    hint = did_you_mean(key, names, n=4)
    raise SlideEncoderNotFound(f"unknown slide encoder {name!r}.{hint} Known: {names}"
                               + (f" (failed entry points: {_load_errors})" if _load_errors
                                  else ""))


def paired_slide_encoder(tile_name: str) -> SlideEncoderSpec | None:
    """The slide encoder that Slideflow's two-stage spelling pairs with a tile extractor."""
    key = normalize(tile_name)
    for spec in _all().values():
        if spec.slideflow_pair and spec.tile_extractor and normalize(spec.tile_extractor) == key:
            return spec
    return None


def register_slide_encoder(spec: SlideEncoderSpec | Mapping[str, Any],
                           builder: Callable[..., Any] | str | None = None, *,
                           replace: bool = False) -> SlideEncoderSpec:
    """Register a slide encoder at runtime; `builder(spec, **kwargs)` returns an nn.Module
    mapping (features (N, D), coords (N, 2), patch_size_level0) to a (dim,) tensor."""
    return SLIDE_ENCODERS.register(spec, builder, replace=replace,
                                   source="register_slide_encoder")


def unregister_slide_encoder(name: str) -> None:
    SLIDE_ENCODERS.unregister(name)


def resolve_builder(spec: SlideEncoderSpec) -> Callable[..., Any]:
    """The callable that builds `spec` (see `SpecRegistry.resolve_builder`)."""
    return SLIDE_ENCODERS.resolve_builder(spec)[0]


def list_slide_encoders(installed_only: bool = False):
    """A pandas DataFrame of every known slide encoder (torch is not imported)."""
    import pandas as pd

    rows = []
    specs = _all()
    for key, s in specs.items():
        rows.append({
            "name": s.name, "level": s.level, "dim": s.dim, "tile_extractor": s.tile_extractor,
            "tile_features": s.tile_features, "tile_px": s.tile_px,
            "tile_um": None if s.tile_um is None else str(s.tile_um),
            "positional": s.positional, "license": s.license, "distribution": s.distribution,
            "installed": True, "plugin": SLIDE_ENCODERS.is_plugin(key), "gated": s.gated,
            "weights": s.weights.describe() if s.family != "mean" else "none (no parameters)",
            "install": "",
        })
    if not installed_only:
        for key, e in _external().items():
            if key not in specs:
                rows.append({"name": e.name, "level": "slide", "dim": e.dim,
                             "tile_extractor": e.tile_extractor, "tile_features": None,
                             "tile_px": None, "tile_um": None, "positional": "",
                             "license": e.license, "distribution": e.distribution,
                             "installed": False, "plugin": False, "gated": True,
                             "weights": "", "install": e.install})
    df = pd.DataFrame(rows)
    for col in ("dim", "tile_features", "tile_px"):
        df[col] = df[col].astype("Int64")
    return df.sort_values(["installed", "distribution", "name"],
                          ascending=[False, True, True]).reset_index(drop=True)
