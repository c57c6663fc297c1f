"""What a MIL run leaves in its folder (layout in the README "MIL" section):

    mil_params.json          config, outcomes, class names, splits, bags_extractor, versions
    models/best_valid.pth    state dict (torch.load(weights_only=True))
    predictions.parquet      slide|patient, y_true, y_pred0..k
    attention/<slide>.npz    attention (N,), coords (N, 2) top-left level-0
    metrics.json             AUROC/AP per class, balanced accuracy, confusion matrix | R2, MAE
    history.csv, history.png training curves

Every file is written to a temporary name and moved into place; mil_params.json comes last,
so a folder without it is an unfinished run.
"""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io.atomic import atomic_open, atomic_path, write_json_atomic
from ..io.npz import save_npz
from ..version import __version__
from .config import MILError

PARAMS = "mil_params.json"
WEIGHTS = "models/best_valid.pth"


def require_parquet() -> None:
    """predictions.parquet needs pyarrow: say so before any training time is spent."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MILError("MIL runs write predictions.parquet, which needs pyarrow: "
                       "pip install 'slideflow[mil]'") from None


def predictions_frame(keys: Sequence[str], key_col: str, y_true: np.ndarray, out: np.ndarray,
                      class_names: Sequence[str]) -> pd.DataFrame:
    """slide|patient, y_true (class index or value), y_pred0..k (probabilities or values)."""
    df = pd.DataFrame({key_col: list(keys), "y_true": y_true})
    for i in range(out.shape[1]):
        df[f"y_pred{i}"] = out[:, i].astype(np.float32)
    return df


def write_predictions(outdir: Path, df: pd.DataFrame) -> Path:
    dest = outdir / "predictions.parquet"
    with atomic_path(dest) as tmp:
        df.to_parquet(tmp, index=False)
    return dest


def write_attention(outdir: Path, per_slide: Mapping[str, tuple[np.ndarray, np.ndarray]]
                    ) -> None:
    folder = outdir / "attention"
    folder.mkdir(parents=True, exist_ok=True)
    for slide, (att, coords) in per_slide.items():
        with atomic_open(folder / f"{slide}.npz") as fh:
            save_npz(fh, {"attention": np.asarray(att, np.float32),
                          "coords": np.asarray(coords, np.int64)})


def write_weights(outdir: Path, state: Mapping[str, Any]) -> Path:
    import torch

    dest = outdir / WEIGHTS
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    with atomic_open(dest) as fh:
        fh.write(buf.getvalue())
    return dest


def write_history(outdir: Path, history: list[dict[str, Any]], score_name: str) -> None:
    df = pd.DataFrame(history)
    with atomic_open(outdir / "history.csv", "w") as fh:
        df.to_csv(fh, index=False, lineterminator="\n")
    try:
        import matplotlib
    except ImportError:  # the [plot] extra: the CSV is enough without it
        return
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["epoch"], df["train_loss"], label="train loss")
    ax.plot(df["epoch"], df["valid_loss"], label="valid loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if df[score_name].notna().any():
        ax2 = ax.twinx()
        ax2.plot(df["epoch"], df[score_name], color="tab:green", label=score_name)
        ax2.set_ylabel(score_name)
    ax.legend(loc="upper left")
    with atomic_open(outdir / "history.png") as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def versions() -> dict[str, Any]:
    import torch

    return {"slideflow": __version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def write_metrics(outdir: Path, metrics: Mapping[str, Any]) -> None:
    write_json_atomic(outdir / "metrics.json", dict(metrics))


def write_params(outdir: Path, params: Mapping[str, Any]) -> None:
    write_json_atomic(outdir / PARAMS, dict(params))


def read_params(model_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(run folder, mil_params.json) for a run folder or a weights file inside it."""
    p = Path(model_dir)
    if not p.exists():  # else a missing folder would be read as a file in its parent
        raise MILError(f"{p}: no such folder; give the folder written by train_mil")
    folder = p if p.is_dir() else (p.parent.parent if p.parent.name == "models" else p.parent)
    path = folder / PARAMS
    try:
        params = json.loads(path.read_text())
    except FileNotFoundError:
        raise MILError(f"{path}: not found; give the folder written by train_mil") from None
    except (OSError, ValueError) as e:
        raise MILError(f"{path}: unreadable ({e})") from e
    if not isinstance(params, dict) or "config" not in params:
        raise MILError(f"{path}: not a MIL model description (no 'config')")
    return folder, params


__all__ = ["PARAMS", "WEIGHTS", "predictions_frame", "read_params", "require_parquet",
           "versions",
           "write_attention", "write_history", "write_metrics", "write_params",
           "write_predictions", "write_weights"]
