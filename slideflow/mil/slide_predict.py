"""`predict_slide`: one slide through a trained MIL model, from the model folder alone.

The extractor and stain normaliser are rebuilt from the `bags_extractor` block of
mil_params.json (the bags' bags_config.json, by registered name: no code is executed), and the
slide is tiled with the bags' geometry and tile selection, so the model sees the features it
was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..model import rebuild_extractor
from ..selection import TileSelection, open_wsi
from .config import MILError
from .heatmap import save_heatmap
from .inference import load_model, run_one


def model_extractor(params: dict[str, Any], folder: Path, extractor: Any, normalizer: Any):
    cfg = params.get("bags_extractor")
    if extractor is None:
        if not cfg:
            raise MILError(f"{folder}: the model records no bags_extractor (its bags had no "
                           "bags_config.json); pass extractor=")
        extractor, rebuilt = rebuild_extractor(cfg)
        return extractor, normalizer if normalizer is not None else rebuilt
    if int(extractor.num_features) != int(params["input_shape"]):
        raise MILError(f"extractor {getattr(extractor, 'name', extractor)} gives "
                       f"{extractor.num_features} features; the model in {folder} takes "
                       f"{params['input_shape']}")
    if cfg and hasattr(extractor, "dump_config") and \
            extractor.dump_config() != cfg.get("extractor"):
        theirs = (cfg.get("provenance") or {}).get("extractor") or cfg.get("extractor")
        raise MILError(f"extractor {getattr(extractor, 'name', '?')} differs from the one the "
                       f"model in {folder} was trained with ({theirs}); pass extractor=None to "
                       "rebuild it")
    return extractor, normalizer


def _open(slide: Any, cfg: dict[str, Any] | None, folder: Path):
    if hasattr(slide, "grid") and hasattr(slide, "tiles"):
        if cfg and (int(slide.tile_px) != int(cfg["tile_px"]) or
                    str(slide.tile_um) != str(cfg["tile_um"])):
            raise MILError(f"{slide.name}: opened at {slide.tile_px}px/{slide.tile_um}; the "
                           f"model in {folder} uses {cfg['tile_px']}px/{cfg['tile_um']}")
        return slide, False
    if not cfg:
        raise MILError(f"{folder}: tile geometry unknown (no bags_extractor); pass a WSI")
    record = dict((cfg.get("provenance") or {}).get("tile_selection") or {})
    try:
        selection = TileSelection(**record)
    except (TypeError, InvalidArgumentError) as e:
        raise MILError(f"{folder}: the bags' tile selection {record} cannot be rebuilt ({e}); "
                       "open the slide yourself (sf.WSI + qc) and pass it") from None
    return open_wsi(slide, int(cfg["tile_px"]), cfg["tile_um"], selection), True


def predict_slide(model: str | Path, slide: Any, extractor: Any = None, *,
                  normalizer: Any = None, config: Any = None, attention: bool = False,
                  device: Any = None) -> np.ndarray | tuple[np.ndarray, np.ma.MaskedArray]:
    """Prediction for one slide (path or WSI) from a trained model folder (Slideflow 3's
    signature). Returns class probabilities (or the regressed value); with `attention`,
    also a masked (grid_h, grid_w) attention grid aligned with the WSI's tile grid."""
    out, att_grid, _ = slide_outputs(load_model(model, device), slide, extractor,
                                     normalizer=normalizer)
    return (out, att_grid) if attention else out


def slide_outputs(model: Any, slide: Any, extractor: Any = None, *, normalizer: Any = None,
                  heatmap_dir: str | Path | None = None
                  ) -> tuple[np.ndarray, np.ma.MaskedArray, dict[str, Any]]:
    """(outputs, attention grid, info) for one slide; `model` is a folder or the
    `(net, params, folder)` of `load_model` (reused over many slides). With `heatmap_dir`,
    also writes the slide's heatmap PNG and GeoJSON there (info: their paths)."""
    net, params, folder = model if isinstance(model, tuple) else load_model(model)
    extractor, normalizer = model_extractor(params, folder, extractor, normalizer)
    wsi, opened = _open(slide, params.get("bags_extractor"), folder)
    try:
        grid = extractor(wsi, normalizer=normalizer)
        feats = np.asarray(grid.rows, np.float32)
        if len(feats) == 0:
            raise MILError(f"{wsi.name}: no tile kept; nothing to predict")
        classification = params["outcome_type"] == "categorical"
        out, att = run_one(net, feats, classification, True)
        keep = np.asarray(wsi.grid, bool)
        att_grid = np.ma.masked_array(np.zeros(keep.shape, np.float32), mask=~keep)
        rows, cols = np.nonzero(keep)
        att_grid[rows, cols] = att
        info: dict[str, Any] = {"slide": wsi.name, "tiles": len(feats),
                                "coords": np.asarray(grid.coords), "attention": att}
        if heatmap_dir is not None:
            pred = {f"y_pred{i}": float(v) for i, v in enumerate(out)}
            info["png"], info["geojson"] = save_heatmap(wsi, att, grid.coords, heatmap_dir,
                                                        pred)
    finally:
        if opened:
            wsi.close()
    return out, att_grid, info


__all__ = ["model_extractor", "predict_slide", "slide_outputs"]
