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
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from ..compat import report_once
from ..compat.atlaspatch import (
    PRECISIONS,
    build_extractor,
    check_names,
    load_plugin,
    read_mpp_csv,
    split_names,
)
from ..compat.atlaspatch import stride_div as to_stride_div
from ..engine.features import generate_bags, jobs_from_paths
from ..engine.selection import TileSelection
from ..engine.slide_embedding_outputs import write_slide_embedding
from ..engine.slide_embeddings import check_geometry
from ..errors import InvalidArgumentError
from ..io.bags import bag_path, read_bag
from ..model.slide_encoders import build_slide_encoder, get_slide_spec
from ..slide import find_slides, is_slide

atlaspatch_app = typer.Typer(help="AtlasPatch-compatible commands (docs/porting.md).",
                             no_args_is_help=True)

_Opt = typer.Option


def _slides(path: Path, recursive: bool) -> list[Path]:
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
    feature_plugin: Annotated[list[Path] | None, _Opt(help="AtlasPatch plugin file(s).")] = None,
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
    report = _patch_stage(**locals())
    if report.failed:
        raise typer.Exit(1)


def _patch_stage(*, wsi_path, output, patch_size, target_mag, feature_extractors, step_size,
                 device, seg_batch_size, patch_workers, max_open_slides, feature_device,
                 feature_batch_size, feature_num_workers, feature_precision, feature_plugin,
                 fast_mode, tissue_thresh, white_thresh, black_thresh, visualize_grids,
                 visualize_mask, visualize_contours, save_images, recursive, mpp_csv,
                 skip_existing, verbose, write_batch) -> Any:
    """Options checked and mapped, then `generate_bags(format='atlaspatch')`; the report."""
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
    for plugin in feature_plugin or []:
        import torch

        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            feature_precision, torch.float32) if str(dev or "cpu").startswith("cuda") \
            else torch.float32
        try:
            load_plugin(plugin, dev or "cpu", dtype, feature_num_workers or 0)
        except InvalidArgumentError as exc:
            raise typer.BadParameter(str(exc)) from None
    try:
        check_names(names)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(str(exc)) from None
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
    return report


@atlaspatch_app.command("encode-slide")
def encode_slide(
    wsi_path: Annotated[Path, typer.Argument(help="A slide file or a folder of slides.")],
    output: Annotated[Path, _Opt("--output", "-o", help="Root folder of the results.")],
    slide_encoders: Annotated[str, _Opt(help="Slide encoder names, comma/space separated.")],
    patch_size: Annotated[int, _Opt(help="Patch size in px at the target magnification.")],
    target_mag: Annotated[float, _Opt(help="Magnification to extract at (10, 20, 40).")],
    step_size: Annotated[int | None, _Opt()] = None,
    device: Annotated[str | None, _Opt()] = None,
    feature_device: Annotated[str | None, _Opt()] = None,
    feature_batch_size: Annotated[int, _Opt()] = 32,
    feature_num_workers: Annotated[int | None, _Opt()] = None,
    feature_precision: Annotated[str, _Opt()] = "float16",
    feature_plugin: Annotated[list[Path] | None, _Opt()] = None,
    feature_extractors: Annotated[str | None, _Opt(
        help="slideflow extension: the tile extractor of encoders that read any features "
             "(e.g. 'mean')")] = None,
    tissue_thresh: Annotated[float, _Opt()] = 0.0,
    white_thresh: Annotated[int, _Opt()] = 15,
    black_thresh: Annotated[int, _Opt()] = 50,
    seg_batch_size: Annotated[int, _Opt()] = 1,
    write_batch: Annotated[int, _Opt()] = 8192,
    patch_workers: Annotated[int | None, _Opt()] = None,
    max_open_slides: Annotated[int, _Opt()] = 200,
    fast_mode: Annotated[bool, _Opt("--fast-mode/--no-fast-mode")] = True,
    save_images: Annotated[bool, _Opt()] = False,
    visualize_grids: Annotated[bool, _Opt()] = False,
    visualize_mask: Annotated[bool, _Opt()] = False,
    visualize_contours: Annotated[bool, _Opt()] = False,
    skip_existing: Annotated[bool, _Opt("--skip-existing/--force")] = True,
    recursive: Annotated[bool, _Opt()] = False,
    mpp_csv: Annotated[Path | None, _Opt()] = None,
    verbose: Annotated[bool, _Opt("--verbose", "-v")] = False,
    random_weights: Annotated[bool, _Opt(hidden=True, help="testing only")] = False,
) -> None:
    """AtlasPatch's `encode-slide`: patch features for each encoder's tile extractor, then
    `slide_features/<encoder>` appended to the same `<output>/patches/<stem>.h5`."""
    opts = {k: v for k, v in locals().items() if k not in ("slide_encoders", "random_weights",
                                                           "feature_extractors")}

    mag = f"{target_mag:g}x"
    groups: dict[str, list[Any]] = {}  # tile extractor -> its slide encoders' names
    for name in split_names(slide_encoders):  # names and geometry first: no weights loaded yet
        spec = get_slide_spec(name)
        tile = spec.tile_extractor or feature_extractors
        if tile is None:
            raise typer.BadParameter(f"{spec.name} reads any tile features: pass "
                                     "--feature-extractors NAME")
        try:
            check_geometry(SimpleNamespace(spec=spec), patch_size, mag,
                           "--patch-size/--target-mag")
        except Exception as exc:
            raise typer.BadParameter(str(exc)) from None
        groups.setdefault(tile, []).append(name)
    # every encoder's weights before any slide is read, so a missing file stops the run early
    built = {tile: [build_slide_encoder(n, pretrained=not random_weights) for n in names]
             for tile, names in groups.items()}
    failed = False
    for tile, encs in built.items():  # each tile need runs its own patch stage
        report = _patch_stage(**opts, feature_extractors=tile)
        failed |= bool(report.failed)
        for o in report.outcomes:
            if o.status not in ("done", "reused"):
                continue
            path = bag_path(output, o.slide, "atlaspatch")
            bag = read_bag(path, encoder=tile)
            for enc in encs:
                vec = enc(bag.features, bag.coords, int(bag.attrs["patch_size_level0"]))
                write_slide_embedding(path.parent, o.slide, enc.name, vec, "h5",
                                      {"tile_extractor": tile, "slide_encoder": enc.name})
                typer.echo(f"{o.slide}: slide_features/{enc.name}")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(atlaspatch_app, name="atlaspatch")
