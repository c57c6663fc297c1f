"""Attention heatmaps a pathologist can open: a PNG over the slide thumbnail (masked outside the
kept tiles, with a colour bar) and a QuPath-importable GeoJSON (one tile polygon per feature,
attention and prediction as measurements)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_open
from ..slide.wsi import WSI
from .config import MILError


def tile_geojson(coords: np.ndarray, extent: int, attention: np.ndarray,
                 prediction: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A FeatureCollection of level-0 tile squares; QuPath reads `measurements`."""
    features = []
    pred = {k: float(v) for k, v in (prediction or {}).items()}
    for (x, y), a in zip(np.asarray(coords, np.int64).tolist(), np.asarray(attention).tolist()):
        ring = [[x, y], [x + extent, y], [x + extent, y + extent], [x, y + extent], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "tile", "isLocked": True,
                           "measurements": {"attention": float(a), **pred}},
        })
    return {"type": "FeatureCollection", "features": features}


def attention_raster(shape: tuple[int, int], scale: float, coords: np.ndarray, extent: int,
                     attention: np.ndarray) -> np.ma.MaskedArray:
    """(h, w) attention at thumbnail scale, masked where no kept tile lies."""
    h, w = shape
    out = np.full((h, w), np.nan, np.float32)
    for (x, y), a in zip(np.asarray(coords, np.int64), np.asarray(attention, np.float32)):
        x0, y0 = int(np.floor(x * scale)), int(np.floor(y * scale))
        x1 = max(x0 + 1, int(np.ceil((x + extent) * scale)))
        y1 = max(y0 + 1, int(np.ceil((y + extent) * scale)))
        out[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = a
    return np.ma.masked_invalid(out)


def save_heatmap(wsi: Any, attention: np.ndarray, coords: np.ndarray, outdir: str | Path,
                 prediction: Mapping[str, float] | None = None, *, extent: int | None = None,
                 width: int = 1024, cmap: str = "inferno") -> tuple[Path, Path]:
    """Write `<outdir>/<slide>.png` (attention over the thumbnail) and `<slide>.geojson`."""
    try:
        import matplotlib
    except ImportError:
        raise MILError("heatmaps need matplotlib: pip install 'slideflow[plot]'") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    attention = np.asarray(attention, np.float32)
    if len(attention) != len(coords):
        raise MILError(f"{wsi.name}: {len(attention)} attention values for {len(coords)} tiles")
    extent = int(extent or wsi.full_extract_px)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    thumb = np.asarray(wsi.thumbnail(width))
    scale = thumb.shape[1] / wsi.dimensions[0]
    raster = attention_raster(thumb.shape[:2], scale, coords, extent, attention)
    fig, ax = plt.subplots(figsize=(8, 8 * thumb.shape[0] / thumb.shape[1] + 0.5))
    ax.imshow(thumb)
    im = ax.imshow(raster, cmap=cmap, alpha=0.6, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="attention")
    title = ", ".join(f"{k} {v:.3f}" for k, v in (prediction or {}).items())
    ax.set_title(f"{wsi.name}  {title}".strip(), fontsize=9)
    ax.axis("off")
    png, geo = outdir / f"{wsi.name}.png", outdir / f"{wsi.name}.geojson"
    with atomic_open(png) as fh:
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    with atomic_open(geo, "w") as fh:
        json.dump(tile_geojson(coords, extent, attention, prediction), fh)
    return png, geo


def save_slide_heatmap(slide_path: str | Path, attention: np.ndarray, coords: np.ndarray,
                       bags_cfg: Mapping[str, Any], outdir: str | Path,
                       prediction: Mapping[str, float] | None = None) -> tuple[Path, Path]:
    """`save_heatmap` for a slide file, opened at the bags' tile geometry."""
    prov = bags_cfg.get("provenance") or {}
    with WSI(slide_path, int(bags_cfg["tile_px"]), bags_cfg["tile_um"]) as wsi:
        return save_heatmap(wsi, attention, coords, outdir, prediction,
                            extent=prov.get("patch_size_level0") or None)


__all__ = ["attention_raster", "save_heatmap", "save_slide_heatmap", "tile_geojson"]
