"""Metrics for MIL predictions, in numpy: AUROC / AP per class, balanced accuracy, confusion
matrix for categorical outcomes; R^2 and MAE for continuous ones."""

from __future__ import annotations

from typing import Any

import numpy as np


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None with one class."""
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), np.float64)
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(y: np.ndarray, score: np.ndarray) -> float | None:
    """Average precision (step-wise area under the precision-recall curve)."""
    y = np.asarray(y).astype(bool)
    if not y.any():
        return None
    order = np.argsort(-np.asarray(score), kind="mergesort")
    hits = y[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]
                           ) -> dict[str, Any]:
    n = len(class_names)
    pred = probs.argmax(axis=1)
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, pred), 1)
    recalls = [cm[i, i] / cm[i].sum() for i in range(n) if cm[i].sum()]
    per_class = {}
    for i, name in enumerate(class_names):
        per_class[name] = {"auroc": auroc(y_true == i, probs[:, i]),
                           "ap": average_precision(y_true == i, probs[:, i]),
                           "n": int((y_true == i).sum())}
    aucs = [v["auroc"] for v in per_class.values() if v["auroc"] is not None]
    return {"type": "categorical", "n": int(len(y_true)), "per_class": per_class,
            "auroc_macro": float(np.mean(aucs)) if aucs else None,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "accuracy": float((pred == y_true).mean()) if len(y_true) else None,
            "confusion_matrix": cm.tolist(), "class_names": list(class_names)}


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    y, p = np.asarray(y_true, np.float64), np.asarray(pred, np.float64).reshape(len(y_true))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"type": "continuous", "n": int(len(y)),
            "r2": 1 - float(((y - p) ** 2).sum()) / ss_tot if ss_tot > 0 else None,
            "mae": float(np.abs(y - p).mean()) if len(y) else None}


def val_score(y_true: np.ndarray, out: np.ndarray, classification: bool) -> float | None:
    """The number the progress bar shows: macro AUROC, or R^2."""
    if classification:
        return classification_metrics(y_true, out, [str(i) for i in range(out.shape[1])]
                                      )["auroc_macro"]
    return regression_metrics(y_true, out)["r2"]


__all__ = ["auroc", "average_precision", "classification_metrics", "regression_metrics",
           "val_score"]
