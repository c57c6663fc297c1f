"""tiffslide reader: pure-Python TIFF (tifffile + zarr); also reads QPTIFF metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import SlideReadError, UnsupportedChannelsError
from .base import OpenSlideAPIReader, check_tile_table, pad_to


class TiffSlideReader(OpenSlideAPIReader):
    name = prefix = "tiffslide"

    def __init__(self, path: str | Path):
        super().__init__(path)
        import warnings

        import tiffslide

        check_tile_table(path)
        with warnings.catch_warnings():  # NDPI: "metadata parsing only partially implemented"
            warnings.simplefilter("ignore", UserWarning)
            self._slide = tiffslide.TiffSlide(str(path))
            self._props = dict(self._slide.properties)
        self._check_tiles()

    def _check_tiles(self) -> None:
        """A tiled level must have a tile size: TileWidth 0 made every read fail with
        'division by zero'."""
        for i, level in enumerate(self._slide.ts_tifffile.series[0].levels):
            page = level.keyframe
            tiled = "TileWidth" in page.tags or "TileLength" in page.tags
            if tiled and (page.tilewidth <= 0 or page.tilelength <= 0):
                self.close()
                raise SlideReadError(
                    f"{self.path}: level {i} is tiled but its TIFF tags say TileWidth "
                    f"{page.tilewidth}, TileLength {page.tilelength} (a corrupt file); "
                    "re-export or re-scan the slide")

    def check_channels(self) -> None:
        tf = self._slide.ts_tifffile
        page = tf.series[0].levels[0].pages[0]
        photometric = getattr(page.photometric, "name", str(page.photometric))
        if getattr(tf, "is_qpi", False) or photometric not in ("RGB", "YCBCR"):
            raise UnsupportedChannelsError(
                f"{self.path}: stored as {photometric} channel planes "
                f"({'QPTIFF multiplex fluorescence' if getattr(tf, 'is_qpi', False) else 'not RGB'}"
                "); slideflow reads RGB brightfield slides only. Convert the channels you want "
                "to an RGB pyramid first (e.g. with tifffile or QuPath)."
            )

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        arr = self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height)),
                                      as_array=True)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        return pad_to(np.ascontiguousarray(arr, dtype=np.uint8), height, width)
