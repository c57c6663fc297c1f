"""The reader interface every backend implements.

Backends are thin: they expose pyramid metadata and `read_region`, returning uint8 RGB numpy
arrays. Everything else (grids, QC, batching) lives above them and is backend-agnostic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...errors import SlideReadError
from . import tiff_scan


class SlideReader(ABC):
    """A whole-slide image opened by one library."""

    name: str = "base"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- metadata -------------------------------------------------------------------------
    @property
    @abstractmethod
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""

    @property
    @abstractmethod
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of every pyramid level, finest first."""

    @property
    def level_downsamples(self) -> list[float]:
        w0 = self.dimensions[0]
        return [w0 / w for w, _ in self.level_dimensions]

    @property
    @abstractmethod
    def mpp(self) -> float | None:
        """Level-0 microns per pixel, or None when the file does not say."""

    @property
    def vendor(self) -> str | None:
        return None

    @property
    def objective_power(self) -> float | None:
        return None

    @property
    def properties(self) -> dict[str, Any]:
        return {}

    @property
    def associated_images(self) -> dict[str, Any]:
        """Label, macro, thumbnail... as PIL images (loaded on access)."""
        return {}

    def check_channels(self) -> None:  # noqa: B027 - optional hook
        """Raise UnsupportedChannelsError when the pixels are not RGB brightfield data."""

    # -- pixels ---------------------------------------------------------------------------
    @abstractmethod
    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 (height, width, 3) RGB from `level`, top-left at level-0 (x, y).

        Pixels outside the slide are white.
        """

    def read_level(self, level: int, band_rows: int = 512) -> np.ndarray:
        """A whole (small) level as RGB, read in bands of `band_rows` rows.

        Bands keep the transient RGBA/PIL copies small: peak memory is the RGB result plus one
        band, not three full-level copies.
        """
        w, h = self.level_dimensions[level]
        out = np.empty((h, w, 3), np.uint8)
        ds = self.level_downsamples[level]
        for y in range(0, h, band_rows):
            rows = min(band_rows, h - y)
            out[y:y + rows] = self.read_region(level, 0, int(round(y * ds)), w, rows)
        return out

    def read_level_scaled(self, level: int, size: tuple[int, int],
                          band_bytes: int = 64 << 20) -> np.ndarray:
        """`level` area-resampled to `size` (w, h), with memory bounded by the result.

        A level at most 4x the result (or under `band_bytes`) is read whole and resized once.
        A larger one (a single-level slide's level 0) is read in bands of about `band_bytes`,
        each band shrunk at once by the integer factor k = floor(level / size) (exact block
        means), then the <= 4x-result image is resized to `size`: peak memory is that image
        plus one band, never the level (a 60k x 60k level would need 10.8 GB).
        """
        w, h = self.level_dimensions[level]
        out_w, out_h = size
        k = max(1, int(min(w / out_w, h / out_h)))
        if k < 2 or w * h * 3 <= max(4 * out_w * out_h * 3, band_bytes):
            img = self.read_level(level)
            if img.shape[1] != out_w or img.shape[0] != out_h:
                img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
            return img
        ds = self.level_downsamples[level]
        rw, rh = w // k, h // k  # whole k x k blocks; the last < k px are left out
        small = None
        if len(self.level_dimensions) == 1 and isinstance(self.path, Path) and \
                self.path.is_file():
            small = tiff_scan.shrink_tiled_tiff(self.path, (w, h), k)  # empty tiles skipped
        if small is not None:
            return cv2.resize(small, (out_w, out_h), interpolation=cv2.INTER_AREA)
        rows = max(k, band_bytes // (w * 3) // k * k)
        small = np.empty((rh, rw, 3), np.uint8)
        for y in range(0, rh * k, rows):
            n = min(rows, rh * k - y)
            band = self.read_region(level, 0, int(round(y * ds)), rw * k, n)
            small[y // k:(y + n) // k] = cv2.resize(band, (rw, n // k),
                                                    interpolation=cv2.INTER_AREA)
            del band
        return cv2.resize(small, (out_w, out_h), interpolation=cv2.INTER_AREA)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""


class OpenSlideAPIReader(SlideReader):
    """Shared metadata for libraries with openslide's API (openslide, tiffslide).

    Subclasses set `self._slide` and `self._props`; `prefix` names their property namespace.
    """

    prefix = "openslide"
    _slide: Any
    _props: dict[str, Any]

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
        return positive_float(self._props.get(f"{self.prefix}.mpp-x"))

    @property
    def vendor(self) -> str | None:
        return self._props.get(f"{self.prefix}.vendor")

    @property
    def objective_power(self) -> float | None:
        return positive_float(self._props.get(f"{self.prefix}.objective-power"))

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self._props)

    @property
    def associated_images(self) -> dict[str, Any]:
        return {k: v.convert("RGB") for k, v in self._slide.associated_images.items()}

    def close(self) -> None:
        self._slide.close()


def positive_float(value: Any) -> float | None:
    """A metadata value as a positive float, or None (missing, malformed, zero or negative)."""
    try:
        number = float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
    return number if number and number > 0 else None


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Openslide-style premultiplied RGBA -> RGB, fully transparent pixels -> white.

    Openslide returns transparent (0,0,0,0) outside the scanned area; white is what a
    brightfield background looks like, so tissue QC treats it as background.
    """
    rgb = np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgb
    transparent = alpha == 0
    if transparent.any():
        rgb[transparent] = 255
    return rgb


def level_pixel(v: Any, downsample: float) -> Any:
    """Level pixel(s) of level-0 coordinate(s) `v`: `rint(v / downsample)`, halves to even.

    Every reader maps coordinates onto a level this way (no sub-pixel interpolation; the
    README's "Fractional downsamples" rule). Scalars give an int, arrays an int64 array.
    """
    out = np.rint(np.asarray(v, dtype=np.float64) / downsample).astype(np.int64)
    return int(out) if out.ndim == 0 else out


def pad_to(region: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad an RGB array with white up to (height, width)."""
    h, w = region.shape[:2]
    if h == height and w == width:
        return region
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    out[: min(h, height), : min(w, width)] = region[:height, :width]
    return out


#: suffixes of the plain tiled TIFFs whose level-0 tile table `check_tile_table` reads
TIFF_SUFFIXES = (".svs", ".tif", ".tiff")


def check_tile_table(path: str | Path) -> None:
    """Refuse a tiled TIFF whose first level stores no tile at all (every TileOffsets or
    every TileByteCounts entry 0): readers fill such tiles with white, which gave bags of
    blank tiles marked done (or, with QC, a misleading '0 tiles')."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            offsets, counts = page.dataoffsets, page.databytecounts
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the backend decides
        return
    if len(offsets) > 1 and (not any(offsets) or not any(counts)):
        raise SlideReadError(f"{path}: level 0 stores no tile data (all {len(offsets)} "
                             "TileOffsets or TileByteCounts are 0: an empty or corrupt file); "
                             "re-export or re-scan the slide")
