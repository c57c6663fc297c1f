"""Slideflow's two-stage extractors: a tile extractor with its paired slide encoder.

Kept apart from `slideflow.slide_embeddings` so that `sf.build_feature_extractor` (the common
one-slide job) imports neither the slide-embedding outputs nor anything it does not use.
"""

from __future__ import annotations

from typing import Any

from ..errors import SlideflowError
from ..model import build_feature_extractor as build_tile
from ..model.slide_encoders import build_slide_encoder, paired_slide_encoder

__all__ = ["TwoStageExtractor", "build_feature_extractor"]


class TwoStageExtractor:
    """Slideflow's two-stage extractor: ``.tile`` (a FeatureExtractor) + ``.slide`` (its paired
    SlideEncoder, built on first use so that making tile bags never needs the slide weights).
    ``x(wsi)`` is the slide embedding; everything else (arrays, bags, configs) is the tile
    extractor's, so the object drops into `generate_feature_bags` unchanged."""

    def __init__(self, tile: Any, slide: Any = None, slide_options: dict | None = None):
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "_slide", slide)
        object.__setattr__(self, "_slide_options", dict(slide_options or {}))

    @property
    def slide(self) -> Any:
        if self._slide is None:
            spec = paired_slide_encoder(self.tile.name)
            if spec is None:
                raise AttributeError(f"{self.tile.name}: no paired slide encoder")
            enc = build_slide_encoder(spec.name, device=self.tile.device,
                                      **self._slide_options)
            object.__setattr__(self, "_slide", enc)
            self.tile._slide = enc  # `pair.tile.slide` is the same object
        return self._slide

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tile, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.tile, name, value)

    def __repr__(self) -> str:
        slide = self._slide if self._slide is not None else "(paired, not built yet)"
        return f"<TwoStageExtractor tile={self.tile!r} slide={slide!r}>"

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        if hasattr(x, "grid") and hasattr(x, "tiles") and hasattr(x, "full_extract_px"):
            grid = self.tile(x, **kwargs)
            if len(grid.rows) == 0:
                raise SlideflowError(f"{x}: no tiles kept; nothing to embed")
            return self.slide(grid.rows, grid.coords, int(x.full_extract_px))
        return self.tile(x, **kwargs)


# Slideflow 3's GigapathFeatures(tile_encoder_weights, slide_encoder_weights, global_pool)
_SF3_PAIR_OPTIONS = ("tile_encoder_weights", "slide_encoder_weights", "global_pool")


def build_feature_extractor(name: str, *args: Any, **kwargs: Any) -> Any:
    """`slideflow.model.build_feature_extractor`, plus Slideflow's two-stage spelling: a tile
    extractor with a paired slide encoder (e.g. 'gigapath') comes back as a
    `TwoStageExtractor`; '<name>.tile' always gives the tile extractor alone.

    Slideflow 3's options of the pair are accepted: ``tile_encoder_weights`` (= ``weights``),
    ``slide_encoder_weights`` and ``global_pool`` (the slide encoder's). ``pretrained=False``
    without slide weights makes the slide encoder random too.
    """
    sf3 = {k: kwargs.pop(k) for k in _SF3_PAIR_OPTIONS if k in kwargs}
    if "tile_encoder_weights" in sf3:
        if args or kwargs.get("weights") is not None:
            raise TypeError("give weights= or tile_encoder_weights=, not both")
        kwargs["weights"] = sf3.pop("tile_encoder_weights")
    tile = build_tile(name, *args, **kwargs)
    suffixed = isinstance(name, str) and name.strip().lower().endswith(".tile")
    spec = None if suffixed else paired_slide_encoder(tile.name)
    if spec is None:
        if sf3:
            raise TypeError(f"{sorted(sf3)} apply to a tile extractor with a paired slide "
                            f"encoder (e.g. 'gigapath'), not to {name!r}")
        return tile
    options: dict[str, Any] = {}
    if sf3.get("slide_encoder_weights") is not None:
        options["weights"] = sf3["slide_encoder_weights"]
    elif kwargs.get("pretrained") is False:
        options["pretrained"] = False
    if "global_pool" in sf3:
        options["global_pool"] = bool(sf3["global_pool"])
    return TwoStageExtractor(tile, slide_options=options)
