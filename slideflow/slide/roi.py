"""Regions of interest: QuPath GeoJSON, slideflow CSV and binary mask images -> tile masks.

Polygons (GeoJSON/CSV) become shapely geometries; mask images stay pixels
(`slideflow.slide.mask.BinaryMask`) and are tested per tile without tracing outlines.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ROIError
from .geometry import TileGrid
from .mask import BinaryMask, is_mask_image, load_mask


@dataclass
class ROI:
    """One annotated region (level-0 pixel coordinates)."""

    name: str
    geometry: Any  # shapely Polygon or MultiPolygon
    label: str | None = None


def load_rois(path: str | Path) -> list[Any]:
    """Read ROIs from a `.geojson`/`.json` (QuPath export), a slideflow `.csv` or a binary mask
    image (`.png`/`.tif`/...: one `BinaryMask` ROI scaled to the slide)."""
    path = Path(path)
    if not path.exists():
        raise ROIError(f"{path}: ROI file not found")
    if is_mask_image(path):
        return [load_mask(path)]
    try:
        if path.suffix.lower() == ".csv":
            return _load_csv(path)
        return _load_geojson(path)
    except ROIError:
        raise
    except Exception as exc:
        raise ROIError(f"{path}: cannot parse ROIs ({exc})") from exc


def _load_csv(path: Path) -> list[ROI]:
    from shapely.geometry import Polygon

    points: dict[str, list[tuple[float, float]]] = {}
    labels: dict[str, str | None] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        missing = [c for c in ("roi_name", "x_base", "y_base") if c not in fields]
        if missing:
            raise ROIError(
                f"{path}: CSV ROI files need columns ROI_name, X_base, Y_base (missing {missing})"
            )
        label_col = fields.get("label")
        for row in reader:
            name = row[fields["roi_name"]]
            points.setdefault(name, []).append(
                (float(row[fields["x_base"]]), float(row[fields["y_base"]]))
            )
            labels.setdefault(name, row.get(label_col) if label_col else None)
    rois = []
    for name, pts in points.items():
        if len(pts) < 3:
            raise ROIError(f"{path}: ROI {name!r} has {len(pts)} points; a polygon needs 3")
        rois.append(ROI(name, Polygon(pts).buffer(0), labels[name]))
    return rois


def _load_geojson(path: Path) -> list[ROI]:
    from shapely.geometry import shape

    data = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):  # QuPath "export as array"
        features = data
    elif isinstance(data, dict) and "coordinates" in data:
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise ROIError(f"{path}: not a GeoJSON Feature/FeatureCollection")
    rois = []
    for i, feat in enumerate(features):
        geom = feat.get("geometry")
        if not geom or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue  # points/lines carry no area
        props = feat.get("properties") or {}
        cls = props.get("classification") or {}
        label = cls.get("name") if isinstance(cls, dict) else (cls or None)
        name = props.get("name") or f"roi_{i}"
        rois.append(ROI(str(name), shape(geom).buffer(0), label))
    if not rois:
        raise ROIError(f"{path}: no Polygon or MultiPolygon features found")
    return rois


RoiLike = str | Path | ROI | Any


def coerce_rois(rois: RoiLike | Iterable[RoiLike] | None) -> list[Any]:
    """ROIs from Slideflow's spellings: a path, a list of paths (GeoJSON, CSV and mask images
    mixed), ROI objects, BinaryMask objects, or a mix of these."""
    if rois is None:
        return []
    if isinstance(rois, (str, Path)):
        return load_rois(rois)
    if isinstance(rois, (ROI, BinaryMask)):
        return [rois]
    if isinstance(rois, np.ndarray):
        return [BinaryMask(rois)]
    if not isinstance(rois, Iterable):
        raise TypeError(f"rois must be a path, a list of paths or ROI objects, got "
                        f"{type(rois).__name__}")
    out: list[Any] = []
    for item in rois:
        if isinstance(item, (str, Path)):
            out.extend(load_rois(item))
        elif isinstance(item, (ROI, BinaryMask)):
            out.append(item)
        elif hasattr(item, "geometry") and hasattr(item, "name"):
            out.append(ROI(str(item.name), item.geometry, getattr(item, "label", None)))
        else:
            raise TypeError(f"rois: cannot use {item!r} ({type(item).__name__}); give GeoJSON/"
                            "CSV/mask-image paths or ROI objects")
    return out


def roi_keep_mask(
    rois: list[Any], grid: TileGrid, method: str = "inside", filter_method: str | float = "center"
) -> np.ndarray:
    """Bool grid mask of tiles kept by the ROIs (polygon ROIs and mask images together).

    `method`: 'inside' keeps tiles in the ROIs, 'outside' keeps the others.
    `filter_method`: 'center' tests the tile centre; a float f in (0, 1] keeps tiles whose
    area inside the ROIs is at least f (for mask images: the covered fraction of mask pixels).
    """
    gh, gw = grid.shape
    masks = [r for r in rois if isinstance(r, BinaryMask)]
    polygons = [r for r in rois if not isinstance(r, BinaryMask)]
    inside = _polygon_inside(polygons, grid, filter_method)
    for m in masks:
        if gh == 0 or gw == 0:
            break
        if filter_method == "center":
            inside |= m.centres_inside(grid)
        else:
            inside |= m.tile_fractions(grid) >= _fraction(filter_method) - 1e-6
    if method == "inside":
        return inside
    if method == "outside":
        return ~inside
    raise ValueError(f"roi_method must be 'inside', 'outside', 'ignore' or 'auto', got {method!r}")


def _fraction(filter_method: str | float) -> float:
    frac = float(filter_method)
    if not 0 < frac <= 1:
        raise ValueError(f"roi_filter_method must be 'center' or in (0, 1], got {frac}")
    return frac


def _polygon_inside(rois: list[ROI], grid: TileGrid, filter_method: str | float) -> np.ndarray:
    import shapely

    gh, gw = grid.shape
    if not rois or gh == 0 or gw == 0:
        inside = np.zeros((gh, gw), bool)
    else:
        union = shapely.union_all([r.geometry for r in rois])
        shapely.prepare(union)
        xs, ys = grid.origins()
        X, Y = np.meshgrid(xs, ys)
        if filter_method == "center":
            half = grid.extent / 2.0
            inside = shapely.contains_xy(union, X + half, Y + half)
        else:
            frac = _fraction(filter_method)
            boxes = shapely.box(X, Y, X + grid.extent, Y + grid.extent)
            area = shapely.area(shapely.intersection(boxes, union))
            inside = area >= frac * grid.extent**2 - 1e-6
    return inside
