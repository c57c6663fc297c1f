"""libvips reader (pyvips); optional, used when installed and asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import SlideReader, level_pixel, pad_to


class VipsReader(SlideReader):
    name = "vips"

    def __init__(self, path: str | Path):
        super().__init__(path)
        import pyvips

        self._pyvips = pyvips
        base = pyvips.Image.new_from_file(str(path), access="random")
        self._fields = {k: base.get(k) for k in base.get_fields()}
        n = int(self._fields.get("openslide.level-count", 1) or 1)
        self._levels = [base] + [
            pyvips.Image.new_from_file(str(path), level=i, access="random") for i in range(1, n)
        ] if n > 1 else [base]

    @property
    def dimensions(self) -> tuple[int, int]:
        return (self._levels[0].width, self._levels[0].height)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(im.width, im.height) for im in self._levels]

    @property
    def mpp(self) -> float | None:
        for key in ("openslide.mpp-x", "aperio.MPP"):
            if key in self._fields:
                try:
                    return float(self._fields[key]) or None
                except (TypeError, ValueError):
                    continue
        xres = float(self._fields.get("xres", 0) or 0)  # pixels per mm in vips
        return 1000.0 / xres if xres > 1 else None

    @property
    def vendor(self) -> str | None:
        return self._fields.get("openslide.vendor")

    @property
    def properties(self) -> dict[str, Any]:
        return {k: v for k, v in self._fields.items() if isinstance(v, (str, int, float))}

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        im = self._levels[level]
        ds = self.level_downsamples[level]
        lx, ly = level_pixel(x, ds), level_pixel(y, ds)
        rw, rh = max(0, min(width, im.width - lx)), max(0, min(height, im.height - ly))
        if rw == 0 or rh == 0:
            return np.full((height, width, 3), 255, np.uint8)
        crop = im.crop(lx, ly, rw, rh)
        arr = np.ndarray(buffer=crop.write_to_memory(), dtype=np.uint8,
                         shape=(crop.height, crop.width, crop.bands))
        if arr.shape[2] == 4:
            rgb = arr[..., :3].copy()
            rgb[arr[..., 3] == 0] = 255
            arr = rgb
        elif arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return pad_to(np.ascontiguousarray(arr[..., :3]), height, width)
