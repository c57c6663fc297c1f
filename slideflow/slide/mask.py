"""Binary mask images (PNG/TIFF/JPEG, any size) as tissue masks or ROIs.

A mask image covers the whole slide: pixel (row, col) of a ``h x w`` mask stands for the
level-0 box ``[col * W / w, (col + 1) * W / w) x [row * H / h, (row + 1) * H / h)`` of a
``W x H`` slide, so a mask saved at any downsample (a thumbnail-sized QuPath or HistoQC export,
a full-resolution label image) lines up with the slide. Non-zero pixels are "in": for images
holding only 0/1 or 0/255 that is exact; grey levels count as in above half their maximum.

Two uses, one loader:
- tissue mask: ``wsi.qc('mask.png')`` (or ``qc=['otsu', 'mask.png']``) keeps tiles whose
  covered fraction of the mask is at least the QC threshold;
- ROI: ``sf.WSI(..., rois='mask.png')`` (alone or in a list with GeoJSON/CSV files) keeps tiles
  inside the mask by their centre or by area (``roi_filter_method``), without tracing polygons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ROIError
from .geometry import TileGrid

#: suffixes read as mask images (as ROIs or QC masks)
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
#: relative aspect-ratio mismatch tolerated between a mask and its slide (rounding of a
#: downsampled export), beyond one mask pixel
ASPECT_TOLERANCE = 0.02


def is_mask_image(obj: Any) -> bool:
    """True for a path (str/Path) whose suffix is an image suffix."""
    return isinstance(obj, (str, Path)) and Path(obj).suffix.lower() in MASK_SUFFIXES


@dataclass
class BinaryMask:
    """A boolean mask image of a whole slide (True = inside)."""

    array: np.ndarray
    path: Path | None = None
    name: str = "mask"
    label: str | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 2 or arr.size == 0:
            raise ROIError(f"{self._where()}: a mask must be a non-empty 2-D image, got shape "
                           f"{arr.shape}")
        self.array = arr.astype(bool, copy=False)

    def _where(self) -> str:
        return str(self.path) if self.path else self.name

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    # ------------------------------------------------------------------ geometry
    def scales(self, dimensions: tuple[int, int]) -> tuple[float, float]:
        """(mask px per level-0 px) along x and y for a slide of level-0 (width, height).

        Raises ROIError when the mask's aspect ratio does not match the slide's.
        """
        w0, h0 = int(dimensions[0]), int(dimensions[1])
        h, w = self.shape
        sx, sy = w / w0, h / h0
        expected_h = h0 * sx
        if abs(expected_h - h) > 1 + ASPECT_TOLERANCE * h:
            raise ROIError(
                f"{self._where()}: mask is {w}x{h} px but the slide is {w0}x{h0} px; a mask "
                f"must cover the whole slide at one scale (expected about {w}x"
                f"{round(expected_h)}). Export it from the full slide, or crop/pad it to the "
                "slide's aspect ratio.")
        return sx, sy

    def tile_fractions(self, grid: Any) -> np.ndarray:
        """Fraction of each grid tile covered by the mask ((grid_h, grid_w) float32)."""
        sx, sy = self.scales((grid.width, grid.height))
        return tile_fractions(self.array, grid, (sx, sy))

    def centres_inside(self, grid: Any) -> np.ndarray:
        """Whether each grid tile's centre falls on a True mask pixel ((grid_h, grid_w) bool)."""
        sx, sy = self.scales((grid.width, grid.height))
        gh, gw = grid.shape
        if gh == 0 or gw == 0:
            return np.zeros((gh, gw), bool)
        xs, ys = grid.origins()
        half = grid.extent / 2.0
        h, w = self.shape
        cols = np.clip(np.floor((xs + half) * sx).astype(np.int64), 0, w - 1)
        rows = np.clip(np.floor((ys + half) * sy).astype(np.int64), 0, h - 1)
        return self.array[rows[:, None], cols[None, :]]

    def resized(self, width: int, height: int) -> np.ndarray:
        """The mask at (width, height): area-averaged (>= half) when shrinking, nearest when
        enlarging."""
        h, w = self.shape
        if (w, h) == (width, height):
            return self.array
        src = self.array.astype(np.float32)
        if width <= w and height <= h:
            out = cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA)
            return out >= 0.5
        return cv2.resize(src, (width, height), interpolation=cv2.INTER_NEAREST) > 0

    # ------------------------------------------------------------------ ROI view
    def geometry(self, dimensions: tuple[int, int]) -> Any:
        """Traced outline as a shapely (Multi)Polygon in level-0 px (for drawing/export only:
        tile selection uses the pixels, not this outline)."""
        key = tuple(dimensions)
        if key not in self._cache:
            self._cache[key] = _trace(self.array, *self.scales(dimensions))
        return self._cache[key]


def load_mask(path: str | Path, *, name: str | None = None, label: str | None = None
              ) -> BinaryMask:
    """Read a binary mask image (PNG/TIFF/JPEG/BMP; grey, RGB or palette)."""
    path = Path(path)
    if not path.is_file():
        raise ROIError(f"{path}: mask image not found")
    try:
        arr = _read_grey(path)
    except Exception as exc:
        raise ROIError(f"{path}: cannot read the mask image ({exc}); save it as an 8-bit or "
                       "1-bit PNG/TIFF") from exc
    top = float(arr.max()) if arr.size else 0.0
    binary = arr > (top / 2.0) if top > 0 else np.zeros(arr.shape, bool)
    return BinaryMask(binary, path=path, name=name or path.stem, label=label)


def _read_grey(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("1", "L", "I", "I;16", "I;16B", "F"):
            return np.asarray(img)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("LA", "RGBA") and np.asarray(img.getchannel("A")).min() < 255:
            return np.asarray(img.getchannel("A"))  # transparent = outside
        return np.asarray(img.convert("L"))


def as_mask(obj: Any) -> BinaryMask:
    """A BinaryMask from a path, a BinaryMask or a 2-D array."""
    if isinstance(obj, BinaryMask):
        return obj
    if isinstance(obj, (str, Path)):
        return load_mask(obj)
    if isinstance(obj, np.ndarray):
        return BinaryMask(obj)
    raise TypeError(f"expected a mask image path, BinaryMask or 2-D array, got "
                    f"{type(obj).__name__}")


def _trace(mask: np.ndarray, sx: float, sy: float) -> Any:
    """Outer contours with their holes, scaled to level-0 px."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    if hierarchy is not None:
        hier = hierarchy[0]
        scale = np.array([1.0 / sx, 1.0 / sy])
        for i, c in enumerate(contours):
            if hier[i][3] != -1 or len(c) < 3:
                continue  # holes are attached to their parents below
            holes = []
            child = hier[i][2]
            while child != -1:
                if len(contours[child]) >= 3:
                    holes.append((contours[child][:, 0, :] + 0.5) * scale)
                child = hier[child][0]
            polys.append(Polygon((c[:, 0, :] + 0.5) * scale, holes).buffer(0))
    return shapely.union_all(polys) if polys else MultiPolygon()


def tile_fractions(mask: np.ndarray, grid: TileGrid,
                   scale: float | tuple[float, float]) -> np.ndarray:
    """Fraction of True pixels of `mask` under every grid tile (grid_h x grid_w, float32).

    `scale` is mask pixels per level-0 pixel (one value, or (x, y) for a mask whose sides were
    rounded separately). Tile boxes are rounded to mask pixels and clipped to the image; a tile
    with no mask pixel inside gets 0.
    """
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    gh, gw = grid.shape
    if gh == 0 or gw == 0:
        return np.zeros((gh, gw), np.float32)
    sat = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)  # (h+1, w+1)
    h, w = mask.shape
    xs, ys = grid.origins()
    x0 = np.clip(np.round(xs * sx).astype(int), 0, w)
    x1 = np.clip(np.round((xs + grid.extent) * sx).astype(int), 0, w)
    y0 = np.clip(np.round(ys * sy).astype(int), 0, h)
    y1 = np.clip(np.round((ys + grid.extent) * sy).astype(int), 0, h)
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    total = (
        sat[y1[:, None], x1[None, :]] - sat[y0[:, None], x1[None, :]]
        - sat[y1[:, None], x0[None, :]] + sat[y0[:, None], x0[None, :]]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area > 0, total / np.maximum(area, 1), 0.0)
    return frac.astype(np.float32)
