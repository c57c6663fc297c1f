"""`slideflow atlaspatch process`: AtlasPatch's command line on slideflow's engine.

    slideflow atlaspatch process SLIDE_OR_DIR -o OUT --patch-size 256 --target-mag 20 \\
        --feature-extractors uni_v1,resnet18

writes AtlasPatch's layout, `OUT/patches/<stem>.h5` (`coords` (N, 5), `features/<name>` under
AtlasPatch's extractor names), through `generate_feature_bags(format='atlaspatch')`. Options that
only tune AtlasPatch's own segmentation or I/O are accepted and reported once; options slideflow
cannot honour are refused (exit 2) naming its equivalent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

atlaspatch_app = typer.Typer(help="AtlasPatch-compatible commands (docs/porting.md).",
                             no_args_is_help=True)

_Opt = typer.Option


def _slides(path: Path, recursive: bool) -> list[Path]:
    from .slide import find_slides, is_slide

    if not path.exists():
        raise typer.BadParameter(f"{path}: no such file or directory")
    if not path.is_dir() or is_slide(path):
        return [path]
    if recursive:
        return find_slides(path)
    return sorted(p for p in path.iterdir() if is_slide(p))


def _refuse(flag: str, why: str) -> None:
    raise typer.BadParameter(f"{flag}: {why}")


@atlaspatch_app.command("process")
def process(
    wsi_path: Annotated[Path, typer.Argument(help="A slide file or a folder of slides.")],
    output: Annotated[Path, _Opt("--output", "-o", help="Root folder of the results.")],
    patch_size: Annotated[int, _Opt(help="Patch size in px at the target magnification.")],
    target_mag: Annotated[float, _Opt(help="Magnification to extract at (10, 20, 40).")],
    feature_extractors: Annotated[str, _Opt(help="Extractor names, comma/space separated.")],
    step_size: Annotated[int | None, _Opt(help="Stride in px (a divisor of the patch).")] = None,
    device: Annotated[str | None, _Opt(help="Device (also the features' by default).")] = None,
    seg_batch_size: Annotated[int, _Opt(help="AtlasPatch's SAM2 batch: no effect.")] = 1,
    patch_workers: Annotated[int | None, _Opt(help="Reader threads.")] = None,
    max_open_slides: Annotated[int, _Opt(help="No effect (one slide at a time).")] = 200,
    feature_device: Annotated[str | None, _Opt(help="Device of the extractors.")] = None,
    feature_batch_size: Annotated[int, _Opt(help="Tiles per forward pass.")] = 32,
    feature_num_workers: Annotated[int | None, _Opt(help="Reader threads.")] = None,
    feature_precision: Annotated[str, _Opt(help="float32, float16 or bfloat16.")] = "float16",
    feature_plugin: Annotated[list[Path] | None, _Opt(help="Not supported: see docs.")] = None,
    fast_mode: Annotated[bool, _Opt("--fast-mode/--no-fast-mode")] = True,
    tissue_thresh: Annotated[float, _Opt(help="Must be 0 here (see docs).")] = 0.0,
    white_thresh: Annotated[int, _Opt(help="Only with --no-fast-mode.")] = 15,
    black_thresh: Annotated[int, _Opt(help="Only with --no-fast-mode.")] = 50,
    visualize_grids: Annotated[bool, _Opt()] = False,
    visualize_mask: Annotated[bool, _Opt()] = False,
    visualize_contours: Annotated[bool, _Opt()] = False,
    save_images: Annotated[bool, _Opt(help="Also write the tiles as PNG.")] = False,
    recursive: Annotated[bool, _Opt(help="Walk sub-folders of WSI_PATH.")] = False,
    mpp_csv: Annotated[Path | None, _Opt(help="CSV wsi,mpp overriding slide mpp.")] = None,
    skip_existing: Annotated[bool, _Opt("--skip-existing/--force")] = True,
    verbose: Annotated[bool, _Opt("--verbose", "-v")] = False,
    write_batch: Annotated[int, _Opt(help="No effect (files are written whole).")] = 8192,
) -> None:
    """AtlasPatch's `process`: Otsu tissue QC, patches and features into one H5 per slide."""
    from .compat import report_once
    from .compat.atlaspatch import PRECISIONS, build_extractor, read_mpp_csv, split_names
    from .compat.atlaspatch import stride_div as to_stride_div
    from .errors import InvalidArgumentError
    from .features import generate_bags, jobs_from_paths
    from .selection import TileSelection

    if feature_plugin:
        _refuse("--feature-plugin", "AtlasPatch plugin files are not loaded; register the "
                "model with @slideflow.model.register_torch and pass its name")
    if not fast_mode:
        _refuse("--no-fast-mode", "use `slideflow features` with --whitespace-fraction / "
                "--grayspace-fraction for per-tile background filters")
    if tissue_thresh:
        _refuse("--tissue-thresh", "contour-area filtering has no equivalent; tissue is kept "
                "per tile by Otsu QC")
    if visualize_grids or visualize_mask or visualize_contours:
        _refuse("--visualize-*", "use sf.WSI(...).preview() for overlays")
    if feature_precision not in PRECISIONS:
        _refuse("--feature-precision", f"choose one of {sorted(PRECISIONS)}")
    for flag, value, default in (("--seg-batch-size", seg_batch_size, 1),
                                 ("--max-open-slides", max_open_slides, 200),
                                 ("--write-batch", write_batch, 8192),
                                 ("--white-thresh", white_thresh, 15),
                                 ("--black-thresh", black_thresh, 50)):
        if value != default:
            report_once("AtlasPatch", f"{flag} has no effect in slideflow")
    if verbose:
        logging.getLogger("slideflow").setLevel(logging.DEBUG)
    try:  # the user's argument mistakes: one usage line, exit 2
        mpps = read_mpp_csv(mpp_csv) if mpp_csv is not None else {}
        names = split_names(feature_extractors)
        stride_div = to_stride_div(patch_size, step_size)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(str(exc)) from None
    jobs = jobs_from_paths(_slides(wsi_path, recursive))
    for job in jobs:
        job.mpp = mpps.get(job.name)
    dev = feature_device or device
    kw = {"batch_size": feature_batch_size, "mixed_precision": PRECISIONS[feature_precision]}
    if dev is not None:
        kw["device"] = dev
    extractors = [build_extractor(n, **kw) for n in names]
    mag = f"{target_mag:g}x"
    selection = TileSelection(qc="otsu", stride_div=stride_div)
    report = generate_bags(jobs, extractors if len(extractors) > 1 else extractors[0], output,
                           patch_size, mag, selection=selection, fmt="atlaspatch",
                           force_regenerate=not skip_existing,
                           num_threads=feature_num_workers or patch_workers,
                           progress=not verbose, save_images=save_images)
    typer.echo(repr(report))
    for name, why in report.failed.items():
        typer.echo(f"FAILED {name}: {why}", err=True)
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(atlaspatch_app, name="atlaspatch")
