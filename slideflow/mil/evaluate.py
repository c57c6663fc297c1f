"""`eval_mil` and `predict_mil`: a saved MIL model applied to bags of a dataset.

Bags made with another extractor, normaliser or tile geometry than the model's are refused
(the message names both).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import MILConfig, MILError
from .data import (
    BagStore,
    Labels,
    annotation_table,
    bag_paths,
    bags_extractor,
    check_same_extractor,
    make_labels,
    outcome_column,
)
from .heatmap import save_slide_heatmap
from .inference import load_model, run_bags, split_attention
from .metrics import classification_metrics, regression_metrics
from .outputs import (
    predictions_frame,
    require_parquet,
    write_attention,
    write_metrics,
    write_predictions,
)

log = logging.getLogger("slideflow")


def write_results(outdir: Path, model: Any, store: BagStore, labels: Labels,
                  classification: bool, class_names: list[str], key_col: str, *,
                  attention: bool, heatmaps: bool = False, dataset: Any = None,
                  bags_cfg: Mapping[str, Any] | None = None
                  ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """predictions.parquet, metrics.json and attention/ (+ heatmaps/) for `labels`' bags."""
    out, atts = run_bags(model, store, labels, classification, attention)
    df = predictions_frame(labels.keys, key_col, labels.y, out, class_names)
    metrics = (classification_metrics(labels.y, out, class_names) if classification
               else regression_metrics(labels.y, out[:, 0]))
    outdir.mkdir(parents=True, exist_ok=True)
    write_predictions(outdir, df)
    if atts is not None:
        per_slide = split_attention(store, labels, atts)
        write_attention(outdir, per_slide)
        if heatmaps:
            _heatmaps(outdir, per_slide, dataset, bags_cfg, df, key_col, labels)
    write_metrics(outdir, metrics)
    return df, metrics


def _heatmaps(outdir: Path, per_slide: Mapping[str, tuple[np.ndarray, np.ndarray]],
              dataset: Any, bags_cfg: Mapping[str, Any] | None, df: pd.DataFrame,
              key_col: str, labels: Labels) -> None:
    paths = {} if dataset is None or isinstance(dataset, pd.DataFrame) else \
        dataset.slide_paths(as_dict=True)
    if bags_cfg is None:
        log.warning("no bags_config.json: tile geometry unknown, heatmaps skipped")
        return
    owner = {s: k for k in labels.keys for s in labels.slides[k]}
    preds = df.set_index(key_col)
    for slide, (att, coords) in per_slide.items():
        if slide not in paths:
            log.warning("%s: slide file not found, heatmap skipped", slide)
            continue
        row = preds.loc[owner[slide]]
        pred = {c: float(row[c]) for c in preds.columns if c.startswith("y_pred")}
        try:
            save_slide_heatmap(paths[slide], att, coords, bags_cfg, outdir / "heatmaps", pred)
        except Exception as exc:  # noqa: BLE001 - one bad slide never stops the rest
            log.warning("%s: heatmap failed (%s: %s)", slide, type(exc).__name__, exc)


def _prepare(model: Any, dataset: Any, outcomes: Any, bags: Any,
             aggregation_level: str | None, config: MILConfig | None, device: Any):
    net, params, folder = load_model(model, device)
    if config is not None and config.to_dict() != params["config"]:
        log.warning("config differs from the model's mil_params.json; the saved one is used")
    outcome = outcome_column(outcomes)
    paths = bag_paths(bags)
    level = aggregation_level or params["aggregation_level"]
    cls = params["outcome_type"] == "categorical"
    labels = make_labels(annotation_table(dataset), outcome, paths, level, cls,
                         params.get("class_names"), "dataset")
    used = {s: paths[s] for k in labels.keys for s in labels.slides[k]}
    cfg = bags_extractor(used.values())
    check_same_extractor(params.get("bags_extractor"), cfg, str(folder),
                         ", ".join(sorted({str(p.parent) for p in used.values()})))
    store = BagStore(used)
    dims = {store.features(s).shape[1] for s in used}
    if dims != {int(params["input_shape"])}:
        raise MILError(f"the bags have {sorted(dims)} features; the model in {folder} takes "
                       f"{params['input_shape']}")
    return net, params, labels, store, cls, "slide" if level == "slide" else "patient", cfg


def eval_mil(weights: str | Path, dataset: Any, outcomes: Any, bags: Any,
             config: MILConfig | None = None, *, outdir: str | Path = "mil",
             attention_heatmaps: bool = False, aggregation_level: str | None = None,
             device: Any = None) -> pd.DataFrame:
    """Evaluate a trained model (its folder or weights file) on `dataset`'s bags; writes
    predictions.parquet, metrics.json, attention/ (and heatmaps/ with `attention_heatmaps`)
    into `outdir` and returns the predictions."""
    require_parquet()
    net, params, labels, store, cls, key_col, cfg = _prepare(weights, dataset, outcomes, bags,
                                                             aggregation_level, config, device)
    df, _ = write_results(Path(outdir), net, store, labels, cls,
                          params.get("class_names") or [], key_col, attention=True,
                          heatmaps=attention_heatmaps, dataset=dataset,
                          bags_cfg=params.get("bags_extractor") or cfg)
    return df


def predict_mil(model: str | Path, dataset: Any, outcomes: Any, bags: Any, *,
                config: MILConfig | None = None, attention: bool = False,
                aggregation_level: str | None = None, device: Any = None
                ) -> pd.DataFrame | tuple[pd.DataFrame, list[np.ndarray]]:
    """Predictions (slide|patient, y_true, y_pred0..k) without writing anything; with
    `attention`, also one attention array per bag (Slideflow 3's return shape)."""
    net, params, labels, store, cls, key_col, _ = _prepare(model, dataset, outcomes, bags,
                                                           aggregation_level, config, device)
    out, atts = run_bags(net, store, labels, cls, attention)
    df = predictions_frame(labels.keys, key_col, labels.y, out, params.get("class_names") or [])
    return (df, atts) if attention else df  # type: ignore[return-value]


__all__ = ["eval_mil", "predict_mil", "write_results"]
