"""OpenSlide reader (SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import OpenSlideAPIReader, check_tile_table, rgba_to_rgb

#: decoded-tile cache bounds; sized per slide to hold two rows of the file's tiles across the
#: widest level, so that the next grid row's runs reuse the decoded tiles they share
CACHE_MIN_BYTES = 32 * 1024 * 1024
CACHE_MAX_BYTES = 256 * 1024 * 1024


def cache_bytes(width: int, tile_height: int | None) -> int:
    """Openslide cache size for a slide `width` px wide stored in tiles `tile_height` px tall."""
    need = 2 * width * (tile_height or 256) * 4  # RGBA
    return int(min(CACHE_MAX_BYTES, max(CACHE_MIN_BYTES, need * 1.25)))


class OpenSlideReader(OpenSlideAPIReader):
    name = prefix = "openslide"

    def __init__(self, path: str | Path):
        super().__init__(path)
        import openslide

        check_tile_table(path)
        self._slide = openslide.OpenSlide(str(path))
        self._props = dict(self._slide.properties)
        try:
            tile_h = self._props.get("openslide.level[0].tile-height")
            size = cache_bytes(self._slide.dimensions[0], int(tile_h) if tile_h else None)
            self._slide.set_cache(openslide.OpenSlideCache(size))
        except (AttributeError, openslide.OpenSlideError):  # older openslide
            pass

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        region = self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        return rgba_to_rgb(np.asarray(region))
