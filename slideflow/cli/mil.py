"""`slideflow mil`: train MIL models on feature bags and predict slides with them.

    slideflow mil train PROJECT_OR_MANIFEST --bags BAGS --outcome COL --model attention_mil \\
        -k 3 -o OUT [--epochs 32 --lr 1e-4 ...]
    slideflow mil predict MODEL_DIR SLIDES... -o OUT [--no-heatmaps]

`train` runs k folds (a patient's slides never straddle train and validation) into
OUT/fold<i>/ (the run folder of `sf.mil.train_mil`). `predict` rebuilds the extractor from the
model folder, writes OUT/predictions.csv, OUT/heatmaps/<slide>.png + .geojson, failures.csv and
summary.json; it exits 1 when any slide failed, 2 when the run cannot start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import SlideflowError
from ..io.atomic import atomic_open
from ..io.runlog import human_summary, run_summary, write_run_files
from ..mil import mil_config
from ..mil.splits import fold_slides
from ..project.project import is_project, load_project
from ..slide import find_slides, is_slide

mil_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="Multiple-instance learning on feature bags.")


def _table(source: Path) -> Any:
    """Annotations of a project folder, or a manifest CSV (slide, patient, outcome columns)."""
    import pandas as pd

    if source.is_dir() and is_project(source):
        return load_project(source).dataset().annotations
    if source.suffix.lower() == ".csv" and source.is_file():
        df = pd.read_csv(source, dtype=str, keep_default_na=False)
        if "slide" not in df.columns:
            raise SlideflowError(f"{source}: a manifest needs a 'slide' column")
        if "patient" not in df.columns:
            df["patient"] = df["slide"]
        return df
    raise SlideflowError(f"{source}: not a project folder or a manifest .csv")


@mil_app.command("train")
def train(
    source: Annotated[Path, typer.Argument(help="project folder or manifest CSV")],
    bags: Annotated[Path, typer.Option(help="folder of feature bags")],
    outcome: Annotated[str, typer.Option(help="annotation column to predict")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir")],
    model: Annotated[str, typer.Option()] = "attention_mil",
    k: Annotated[int, typer.Option("-k", help="folds (>= 2)")] = 3,
    epochs: Annotated[int, typer.Option()] = 32,
    lr: Annotated[float, typer.Option()] = 1e-4,
    batch_size: Annotated[int, typer.Option()] = 32,
    bag_size: Annotated[int, typer.Option()] = 512,
    seed: Annotated[int, typer.Option()] = 0,
    aggregation_level: Annotated[str, typer.Option(help="slide or patient")] = "slide",
    loss: Annotated[str, typer.Option(help="cross_entropy (categorical) or mse")] =
        "cross_entropy",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train one model per fold; prints each fold's validation metrics."""
    from ..mil.train import train_mil

    try:
        config = mil_config(model, epochs=epochs, lr=lr, batch_size=batch_size,
                            bag_size=bag_size, seed=seed, aggregation_level=aggregation_level,
                            loss=loss)
        df = _table(source)
        if outcome not in df.columns:
            raise SlideflowError(f"{source}: no column {outcome!r} (columns: "
                                 f"{', '.join(df.columns)})")
        df = df[df[outcome].astype(str).str.strip() != ""]
        folds = fold_slides(df, k, outcome if config.is_classification else None, seed=seed)
        for i, val in enumerate(folds):
            res = train_mil(config, df[~df["slide"].isin(val)], df[df["slide"].isin(val)],
                            outcome, bags, outdir=outdir / f"fold{i}", progress=not quiet)
            m = res.metrics
            score = (f"AUROC {m['auroc_macro']:.3f}" if m["type"] == "categorical" and
                     m["auroc_macro"] is not None else
                     f"R2 {m['r2']:.3f}" if m.get("r2") is not None else "n/a")
            typer.echo(f"fold {i}: {len(val)} validation slides, {score} -> {res.outdir}")
    except SlideflowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@dataclass
class _Outcome:
    slide: str
    status: str
    tiles: int = 0
    error: str | None = None
    error_type: str | None = None


@mil_app.command("predict")
def predict(
    model_dir: Annotated[Path, typer.Argument(help="folder written by mil train")],
    slides: Annotated[list[Path], typer.Argument(help="slide files or folders")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir")],
    heatmaps: Annotated[bool, typer.Option("--heatmaps/--no-heatmaps")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Predict slides with a trained model (extractor rebuilt from the model folder)."""
    import pandas as pd

    from ..mil.inference import load_model
    from ..mil.slide_predict import model_extractor, slide_outputs

    start = time.perf_counter()
    try:
        loaded = load_model(model_dir)
        extractor, normalizer = model_extractor(loaded[1], loaded[2], None, None)
        paths = [q for p in slides for q in
                 (find_slides(p) if p.is_dir() and not is_slide(p) else [p])]
        if not paths:
            raise SlideflowError("no slides found in the paths given")
    except SlideflowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    outdir.mkdir(parents=True, exist_ok=True)
    rows, outcomes = [], []
    names = loaded[1].get("class_names") or []
    for path in paths:
        try:
            out, _, info = slide_outputs(loaded, path, extractor, normalizer=normalizer,
                                         heatmap_dir=outdir / "heatmaps" if heatmaps else None)
        except Exception as exc:  # noqa: BLE001 - one bad slide never stops the batch
            outcomes.append(_Outcome(Path(path).stem, "failed", error=str(exc),
                                     error_type=type(exc).__name__))
            typer.echo(f"FAILED {path}: {type(exc).__name__}: {exc}", err=True)
            continue
        row = {"slide": info["slide"], "tiles": info["tiles"],
               **{f"y_pred{i}": float(v) for i, v in enumerate(out)}}
        if names:
            row["predicted_class"] = names[int(out.argmax())]
        rows.append(row)
        outcomes.append(_Outcome(info["slide"], "done", tiles=info["tiles"]))
    with atomic_open(outdir / "predictions.csv", "w") as fh:
        pd.DataFrame(rows).to_csv(fh, index=False, lineterminator="\n")
    summary = run_summary(outcomes, time.perf_counter() - start, model=str(model_dir),
                          outdir=str(outdir))
    write_run_files(outdir, outcomes, summary)
    if not quiet or summary["failed"]:
        typer.echo(human_summary(summary))
    if summary["failed"]:
        typer.echo(f"failures listed in {outdir / 'failures.csv'}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(mil_app, name="mil")


__all__ = ["mil_app", "register"]
