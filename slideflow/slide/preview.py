"""Preview pictures: thumbnail + tissue mask tint + ROI outlines + kept-tile boxes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from .geometry import TileGrid

if TYPE_CHECKING:
    from PIL.Image import Image


class Previewable(Protocol):
    """What a preview needs from a slide (`WSI` provides it); a protocol so this module does
    not import `wsi`, which imports this one."""

    dimensions: tuple[int, int]
    full_extract_px: int
    rois: list[Any]

    @property
    def grid(self) -> np.ndarray: ...

    @property
    def grid_spec(self) -> TileGrid: ...

    @property
    def coords(self) -> np.ndarray: ...

    def thumbnail(self, width: int) -> Any: ...


def draw_preview(wsi: Previewable, width: int = 1024, show_tiles: bool = True, show_rois: bool = True,
                 show_mask: bool = True) -> Image:
    """Draw the kept tiles (green boxes), removed grid cells (dimmed) and ROIs (blue)."""
    from PIL import Image

    thumb = np.asarray(wsi.thumbnail(width)).copy()
    scale = thumb.shape[1] / wsi.dimensions[0]
    if show_mask:
        grid = wsi.grid
        gh, gw = grid.shape
        dropped = np.zeros(thumb.shape[:2], bool)
        xs, ys = wsi.grid_spec.origins()
        e = wsi.full_extract_px
        for r, c in np.argwhere(~grid):
            x0, y0 = int(xs[c] * scale), int(ys[r] * scale)
            dropped[y0:int((ys[r] + e) * scale), x0:int((xs[c] + e) * scale)] = True
        dropped &= ~_kept_area(wsi, thumb.shape[:2], scale)
        thumb[dropped] = (thumb[dropped] * 0.45 + 140).astype(np.uint8)
    if show_tiles and len(wsi):
        e = wsi.full_extract_px * scale
        for x, y in wsi.coords:
            p0 = (int(x * scale), int(y * scale))
            p1 = (int(x * scale + e) - 1, int(y * scale + e) - 1)
            cv2.rectangle(thumb, p0, p1, (0, 160, 0), 1)
    if show_rois and wsi.rois:
        for roi in wsi.rois:
            geom = roi.geometry(wsi.dimensions) if callable(roi.geometry) else roi.geometry
            geoms = getattr(geom, "geoms", [geom])
            for g in geoms:
                pts = (np.asarray(g.exterior.coords) * scale).astype(np.int32)
                cv2.polylines(thumb, [pts], True, (30, 60, 220), 2)
                for hole in g.interiors:
                    hpts = (np.asarray(hole.coords) * scale).astype(np.int32)
                    cv2.polylines(thumb, [hpts], True, (220, 60, 30), 1)
    return Image.fromarray(thumb)


def _kept_area(wsi: Previewable, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Pixels covered by any kept tile (overlapping strides must not dim kept tiles)."""
    kept = np.zeros(shape, bool)
    e = wsi.full_extract_px
    for x, y in wsi.coords:
        kept[int(y * scale):int((y + e) * scale), int(x * scale):int((x + e) * scale)] = True
    return kept
