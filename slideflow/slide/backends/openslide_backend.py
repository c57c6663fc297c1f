"""OpenSlide reader (SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import SlideReader, positive_float, rgba_to_rgb

#: decoded-tile cache: holds a few rows of JPEG tiles, so strip reads never decode twice
CACHE_BYTES = 256 * 1024 * 1024


class OpenSlideReader(SlideReader):
    name = "openslide"

    def __init__(self, path: str | Path):
        super().__init__(path)
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        try:
            self._slide.set_cache(openslide.OpenSlideCache(CACHE_BYTES))
        except (AttributeError, openslide.OpenSlideError):  # older openslide
            pass

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(self._slide.dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self._slide.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._slide.level_downsamples)

    @property
    def mpp(self) -> float | None:
        return positive_float(self._slide.properties.get("openslide.mpp-x"))

    @property
    def vendor(self) -> str | None:
        return self._slide.properties.get("openslide.vendor")

    @property
    def objective_power(self) -> float | None:
        return positive_float(self._slide.properties.get("openslide.objective-power"))

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self._slide.properties)

    @property
    def associated_images(self) -> dict[str, Any]:
        return {k: v.convert("RGB") for k, v in self._slide.associated_images.items()}

    @property
    def tile_height(self) -> int | None:
        value = self._slide.properties.get("openslide.level[0].tile-height")
        return int(value) if value else None

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        region = self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        return rgba_to_rgb(np.asarray(region))

    def close(self) -> None:
        self._slide.close()
