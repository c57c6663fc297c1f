"""Plain images (PNG, JPEG, BMP, single-level TIFF) read as one-level slides.

A photo of a tile, a crop exported from a viewer or a scanner's single-plane TIFF is a slide
with one pyramid level. Pixels are decoded once (OpenCV, no PIL pixel limit) and kept in
memory; regions outside the image are white like every other backend.

Resolution: taken from the file (PNG pHYs, JPEG JFIF/EXIF density, TIFF XResolution with a
unit) only when it describes a microscope (<= `MAX_FILE_MPP` µm/px). Image editors write 72 or
96 dpi by default (~350 µm/px), which says nothing about the tissue; such files, and files
without a resolution, need ``mpp=`` (`MissingMPPError` says so).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from .base import SlideReader

#: coarser than this (µm/px), a recorded resolution is an editor default, not a microscope's
MAX_FILE_MPP = 20.0
_MICRONS_PER = {"inch": 25400.0, "cm": 10000.0}


class ImageReader(SlideReader):
    name = "image"

    def __init__(self, path: str | Path):
        super().__init__(path)
        from PIL import Image

        with _pixel_limit_off(), Image.open(path) as img:
            self._size = (int(img.width), int(img.height))
            self._format = img.format
            self._frames = int(getattr(img, "n_frames", 1))
            self._file_mpp, self.mpp_note = _resolution(img)
        if self._frames > 1 and self._format == "TIFF":
            raise ValueError(f"{path}: a TIFF with {self._frames} pages is not a plain image; "
                             "open it with the openslide or tiffslide backend")
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._size

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [self._size]

    @property
    def level_downsamples(self) -> list[float]:
        return [1.0]

    @property
    def mpp(self) -> float | None:
        return self._file_mpp

    @property
    def vendor(self) -> str | None:
        return (self._format or "image").lower()

    @property
    def properties(self) -> dict[str, Any]:
        return {"image.format": self._format, "image.mpp": self._file_mpp,
                "image.mpp-note": self.mpp_note}

    def pixels(self) -> np.ndarray:
        """The whole image, uint8 RGB (decoded on first use)."""
        with self._lock:
            if self._pixels is None:
                self._pixels = _decode(self.path)
                if self._pixels.shape[1::-1] != self._size:
                    raise ValueError(f"{self.path}: decoded {self._pixels.shape[1::-1]} px, "
                                     f"header says {self._size}")
            return self._pixels

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        if level != 0:
            raise ValueError(f"{self.path}: a plain image has one level (asked for {level})")
        img = self.pixels()
        w, h = self._size
        x0, y0 = max(0, int(x)), max(0, int(y))
        x1, y1 = min(w, int(x) + int(width)), min(h, int(y) + int(height))
        out = np.full((int(height), int(width), 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - int(y):y1 - int(y), x0 - int(x):x1 - int(x)] = img[y0:y1, x0:x1]
        return out

    def read_level(self, level: int, band_rows: int = 512) -> np.ndarray:
        if level != 0:
            raise ValueError(f"{self.path}: a plain image has one level (asked for {level})")
        return self.pixels().copy()

    def close(self) -> None:
        self._pixels = None


class _pixel_limit_off:
    """PIL refuses images over ~179 Mpx as 'decompression bombs'; slides are that large."""

    _lock = threading.Lock()

    def __enter__(self):
        from PIL import Image

        self._lock.acquire()
        self._saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        return self

    def __exit__(self, *exc: object) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self._saved
        self._lock.release()


def _decode(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)  # any path (cv2.imread mangles non-ASCII)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        from PIL import Image

        with _pixel_limit_off(), Image.open(path) as img:  # formats OpenCV lacks
            return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    return np.ascontiguousarray(bgr[..., ::-1])


def _resolution(img: Any) -> tuple[float | None, str]:
    """(µm/px or None, a note on where it came from / why it was not used)."""
    per_unit, unit = _density(img)
    if not per_unit:
        return None, "the file records no resolution"
    mpp = _MICRONS_PER[unit] / per_unit
    if mpp > MAX_FILE_MPP:
        return None, (f"the file records {per_unit:.4g} px per {unit} ({mpp:.4g} um/px), an image "
                      "editor's default rather than a microscope resolution")
    return mpp, f"{per_unit:.6g} px per {unit} in the file"


def _density(img: Any) -> tuple[float | None, str]:
    """(pixels per unit, 'inch' | 'cm') recorded in the file, x direction."""
    info = img.info
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", {})
        res, unit = tags.get(282), tags.get(296, 2)
        if res is None or unit not in (2, 3):  # 1 = no absolute unit
            return None, "inch"
        return _positive(res), "inch" if unit == 2 else "cm"
    if img.format == "JPEG":
        if info.get("jfif_unit") in (1, 2) and info.get("jfif_density"):
            return _positive(info["jfif_density"][0]), "inch" if info["jfif_unit"] == 1 else "cm"
        exif = img.getexif() if hasattr(img, "getexif") else {}
        res, unit = exif.get(282), exif.get(296, 2)
        if res is not None and unit in (2, 3):
            return _positive(res), "inch" if unit == 2 else "cm"
        return None, "inch"
    dpi = info.get("dpi")  # PNG pHYs with metre units, BMP
    return (_positive(dpi[0]), "inch") if dpi else (None, "inch")


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if v > 0 else None
