"""`train_mil`: fit a MIL model on feature bags and leave a self-describing run folder.

Deterministic on CPU: the seed fixes the initial weights, dropout, tile sampling and batch
order, so the same data and config give byte-identical weights and predictions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import OutputConflictError
from ..progress import is_interactive
from .config import MILConfig, MILError
from .data import (
    BagStore,
    Labels,
    annotation_table,
    bag_paths,
    bags_extractor,
    make_labels,
    outcome_column,
    sample_batch,
)
from .evaluate import write_results
from .inference import model_from_config, resolve_device, run_bags
from .metrics import val_score
from .outputs import (
    PARAMS,
    WEIGHTS,
    require_parquet,
    versions,
    write_history,
    write_params,
    write_weights,
)

log = logging.getLogger("slideflow")


@dataclass
class MILResult:
    """A finished run: its folder, validation predictions and metrics."""

    outdir: Path
    predictions: pd.DataFrame
    metrics: dict[str, Any]


def _class_names(frames: list[pd.DataFrame], outcome: str, have: set[str]) -> list[str]:
    values: set[str] = set()
    for df in frames:
        if outcome in df.columns:
            values |= set(df[df["slide"].isin(have)][outcome].astype(str).str.strip())
    return sorted(v for v in values if v not in ("", "nan", "None"))


def _check_disjoint(tr: Labels, va: Labels, level: str) -> None:
    tr_slides = {s for k in tr.keys for s in tr.slides[k]}
    both = sorted(tr_slides & {s for k in va.keys for s in va.slides[k]})
    if both:
        raise MILError(f"{len(both)} slide(s) are in both train and validation "
                       f"({', '.join(both[:5])}); split the dataset first (kfold_split)")
    if level == "patient":
        shared = sorted(set(tr.keys) & set(va.keys))
        if shared:
            raise MILError(f"patients {shared[:5]} are in both train and validation")


def _class_weights(y: np.ndarray, n: int):
    import torch

    counts = np.bincount(y, minlength=n).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def train_mil(config: MILConfig, train_dataset: Any, val_dataset: Any, outcomes: Any,
              bags: Any, *, outdir: str | Path = "mil", exp_label: str | None = None,
              attention_heatmaps: bool = False, progress: bool = True,
              device: Any = None) -> MILResult:
    """Train `config.model` on `bags` (Slideflow 3: ``sf.mil.train_mil``).

    `train_dataset` / `val_dataset`: Datasets (or DataFrames with slide, patient and outcome
    columns); `outcomes`: the annotation column; `bags`: a bag folder (or list of folders /
    files). Writes the run folder described in `slideflow.mil.outputs` into `outdir`
    (`outdir/<exp_label>` when given); a folder that already holds a finished run is refused.
    `device`: default CUDA when available, else the CPU (where runs are byte-reproducible).
    """
    import torch
    from torch.nn import functional as F

    if not isinstance(config, MILConfig):
        raise MILError(f"config must come from mil_config(...), got {type(config).__name__}")
    require_parquet()
    outcome = outcome_column(outcomes)
    outdir = Path(outdir) / exp_label if exp_label else Path(outdir)
    if (outdir / PARAMS).exists():
        raise OutputConflictError(f"{outdir}: already holds a trained model ({PARAMS}); "
                                  "choose another outdir")
    paths = bag_paths(bags)
    tr_df, va_df = annotation_table(train_dataset), annotation_table(val_dataset)
    cls, level = config.is_classification, config.aggregation_level
    names = _class_names([tr_df, va_df], outcome, set(paths)) if cls else None
    if cls and len(names) < 2:  # type: ignore[arg-type]
        raise MILError(f"{outcome!r} has fewer than two classes among the slides with bags")
    tr = make_labels(tr_df, outcome, paths, level, cls, names, "train_dataset")
    va = make_labels(va_df, outcome, paths, level, cls, names, "val_dataset")
    _check_disjoint(tr, va, level)
    if level == "slide":
        shared = sorted(set(tr_df.patient[tr_df.slide.isin(tr.keys)]) &
                        set(va_df.patient[va_df.slide.isin(va.keys)]))
        if shared:
            log.warning("%d patient(s) have slides in both train and validation (%s): "
                        "validation is optimistic; split with kfold_split", len(shared),
                        ", ".join(map(str, shared[:5])))
    used = {s: paths[s] for lab in (tr, va) for k in lab.keys for s in lab.slides[k]}
    extractor_cfg = bags_extractor(used.values())
    store = BagStore(used)
    dims = {store.features(s).shape[1] for s in used}
    if len(dims) != 1:
        raise MILError(f"the bags have different feature sizes {sorted(dims)}")
    n_in, n_out = dims.pop(), (len(names) if cls else 1)  # type: ignore[arg-type]

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = model_from_config(config, n_in, n_out, for_training=True)
    dev = resolve_device(device)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.wd)
    n_tr, bs = len(tr.keys), config.batch_size
    steps = (n_tr // bs if config.drop_last and n_tr >= bs else math.ceil(n_tr / bs))
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr,
                                                 total_steps=config.epochs * steps)
             if config.fit_one_cycle else None)
    weight = _class_weights(tr.y, n_out).to(dev) if cls and config.weighted_loss else None

    def bag_loss(logits, y):
        if cls:
            return F.cross_entropy(logits, y, weight=weight)
        return F.mse_loss(logits[:, 0], y)

    score_name = "valid_auroc" if cls else "valid_r2"
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    y_val = torch.from_numpy(va.y)
    with _EpochBar(config.epochs, progress) as bar:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            model.train()
            order = rng.permutation(n_tr)
            total, data_s = 0.0, 0.0
            for b in range(steps):
                idx = order[b * bs:(b + 1) * bs]
                t0 = time.perf_counter()
                x, m = sample_batch(store, tr, idx, config.bag_size, rng)
                data_s += time.perf_counter() - t0
                y = torch.from_numpy(tr.y[idx]).to(dev)
                logits, extra = model.loss_terms(torch.from_numpy(x).to(dev),
                                                 torch.from_numpy(m).to(dev), y)
                loss = bag_loss(logits, y)
                if extra is not None:
                    loss = model.bag_weight * loss + (1 - model.bag_weight) * extra
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(idx)
            train_s = time.perf_counter() - start
            out, _ = run_bags(model, store, va, cls)
            with torch.no_grad():
                pred = torch.from_numpy(out)
                vloss = float(F.nll_loss(torch.log(pred.clamp_min(1e-12)), y_val) if cls
                              else F.mse_loss(pred[:, 0], y_val))
            score = val_score(va.y, out, cls)
            history.append({"epoch": epoch, "train_loss": total / max(1, min(n_tr, steps * bs)),
                            "valid_loss": vloss, score_name: score,
                            "seconds": round(time.perf_counter() - start, 3),
                            "train_seconds": round(train_s, 3),
                            "data_seconds": round(data_s, 3)})
            bar.update(history[-1], score_name)
            if config.save_monitor == "last" or best is None or vloss < best[0]:
                best = (vloss, {k: v.detach().cpu().clone()
                                for k, v in model.state_dict().items()})
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    key_col = "slide" if level == "slide" else "patient"
    outdir.mkdir(parents=True, exist_ok=True)
    df, metrics = write_results(outdir, model, store, va, cls, names or [], key_col,
                                attention=True, heatmaps=attention_heatmaps,
                                dataset=val_dataset, bags_cfg=extractor_cfg)
    write_history(outdir, history, score_name)
    write_weights(outdir, best[1])
    params = {
        "config": config.to_dict(), "model": config.model, "outcomes": [outcome],
        "outcome_type": "categorical" if cls else "continuous",
        "outcome_labels": {str(i): n for i, n in enumerate(names)} if cls else None,
        "class_names": names or None, "input_shape": n_in, "output_shape": n_out,
        "aggregation_level": level, "weights": WEIGHTS, "seed": config.seed,
        "splits": {"train": sorted(s for k in tr.keys for s in tr.slides[k]),
                   "val": sorted(s for k in va.keys for s in va.slides[k])},
        "bags": sorted({str(p.parent) for p in used.values()}),
        "bags_extractor": extractor_cfg, "versions": versions(),
        "best_epoch": int(np.argmin([h["valid_loss"] for h in history])) + 1
        if config.save_monitor == "valid_loss" else config.epochs,
    }
    write_params(outdir, params)
    return MILResult(outdir, df, metrics)


class _EpochBar:
    """A rich bar (epoch, loss, validation score) on a terminal; one log line per epoch
    elsewhere."""

    def __init__(self, epochs: int, enabled: bool):
        self.epochs, self.live = epochs, enabled and is_interactive()
        self._progress: Any = None

    def __enter__(self) -> _EpochBar:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("MIL epoch"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.description}"))
            self._progress.start()
            self._task = self._progress.add_task("", total=self.epochs)
        return self

    def update(self, row: dict[str, Any], score_name: str) -> None:
        score = row[score_name]
        text = (f"loss {row['train_loss']:.4f} val_loss {row['valid_loss']:.4f} "
                f"{score_name} {'n/a' if score is None else f'{score:.3f}'}")
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=text)
        else:
            log.info("epoch %d/%d: %s", row["epoch"], self.epochs, text)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


__all__ = ["MILResult", "train_mil"]
