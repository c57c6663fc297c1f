"""Command line: the same engine as the Python API, over many slides.

    slideflow info SLIDE
    slideflow preview SLIDE --tile-px 256 --tile-um 128 --qc otsu -o preview.png
    slideflow features SLIDES... -e efficientnet_lite0_imagenet --tile-px 224 --tile-um 112 -o bags/
    slideflow extract-tiles PROJECT --tile-px 256 --tile-um 128
    slideflow extractors

`features` shards its slide list for SLURM arrays (`--shard i/n`, or SLURM_ARRAY_TASK_ID /
SLURM_ARRAY_TASK_COUNT from the environment): every task writes disjoint bags into one folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import SlideflowError
from ..io import formats, runlog
from ..io.held_locks import install_sigterm_handler
from ..validate import optional_positive_int, positive_int
from ..version import __version__
from .errors import check_inputs_exist, run_app
from .inputs import make_jobs, ray_arg, ray_argv, shard, stride_div_of, weights_map
from .lazy import LazyGroup

if TYPE_CHECKING:
    from ..slide.geometry import TileGeometry

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  cls=LazyGroup,  # extractors, encode-*, doctor, mil, atlaspatch: `lazy.LAZY`
                  help="slideflow: whole-slide images to tiles and feature vectors.")


def _geometry(tile_px: int, tile_um: str) -> TileGeometry:
    """--tile-px / --tile-um parsed once (`TileGeometry`), the value handed to the engine."""
    from ..slide.geometry import TileGeometry  # numpy: not at start-up

    return TileGeometry.from_text(tile_px, tile_um)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"slideflow {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="print the version and exit")] = False) -> None:
    """slideflow: whole-slide images to tiles and feature vectors."""


@app.command()
def info(slide: Annotated[str, typer.Argument(help="slide file, DICOM folder or URL")],
         as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Dimensions, levels, MPP, vendor and associated images of a slide."""
    from ..slide.backends import open_reader

    r = open_reader(slide)
    data = {"path": str(slide), "backend": r.name, "vendor": r.vendor, "dimensions": r.dimensions,
            "mpp": r.mpp, "levels": [{"dimensions": d, "downsample": ds} for d, ds in
                                     zip(r.level_dimensions, r.level_downsamples)],
            "associated_images": sorted(r.associated_images)}
    typer.echo(json.dumps(data, indent=2) if as_json else
               "\n".join(f"{k:18} {v}" for k, v in data.items()))


@app.command()
def preview(
    slide: Annotated[str, typer.Argument(help="slide file, DICOM folder or URL")],
    tile_px: Annotated[int, typer.Option()] = 256,
    tile_um: Annotated[str, typer.Option()] = "128",
    qc: Annotated[str | None, typer.Option(help="otsu, blur or both")] = "otsu",
    mpp: Annotated[float | None, typer.Option()] = None,
    rois: Annotated[Path | None, typer.Option()] = None,
    width: Annotated[int, typer.Option()] = 1024,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("preview.png"),
) -> None:
    """Write a PNG of the slide with the tissue mask, ROIs and kept tiles."""
    from ..slide.wsi import WSI

    geo = _geometry(tile_px, tile_um)
    wsi = WSI(slide, geo.tile_px, geo.tile_um, mpp=mpp, rois=rois)
    if qc:
        wsi.qc(qc)
    wsi.preview(width=width).save(output)
    typer.echo(f"{wsi}\nwrote {output}")


@app.command()
def features(
    slides: Annotated[list[str] | None, typer.Argument(
        help="slide files, DICOM folders, folders of slides, or URLs (s3://bucket/prefix/)")
    ] = None,
    extractor: Annotated[str, typer.Option("-e", "--extractor", help="name, or several "
                                           "comma-separated (one pass over the tiles)")
                         ] = "efficientnet_lite0_imagenet",
    outdir: Annotated[Path, typer.Option("-o", "--outdir")] = Path("bags"),
    manifest: Annotated[Path | None, typer.Option(
        help="CSV: sample_id,image_path[,mask_path][,spacing_at_level_0][,patient_id]")] = None,
    recursive: Annotated[bool, typer.Option(help="look for slides in sub-folders")] = False,
    tile_px: Annotated[int, typer.Option()] = 224,
    tile_um: Annotated[str, typer.Option(help="microns (112) or magnification (20x)")] = "112",
    overlap: Annotated[float | None, typer.Option(help="fraction shared by neighbouring tiles "
                                                  "(0, 0.5, 0.75...)")] = None,
    stride_div: Annotated[int | None, typer.Option(help="tiles step by tile/stride_div")] = None,
    fmt: Annotated[str, typer.Option("--format", help=formats.choices_text(formats.BAGS))
               ] = "pt",
    qc: Annotated[str | None, typer.Option(help="otsu, blur, both or none")] = "otsu",
    tissue_thresh: Annotated[float, typer.Option(help="minimum tissue fraction per tile")] = 0.4,
    weights: Annotated[str | None, typer.Option(help="local weights file or folder (NAME=PATH,"
                                                "... with several extractors)")] = None,
    feature_plugin: Annotated[Path | None, typer.Option(help="python file registering "
                                                        "extractors")] = None,
    normalizer: Annotated[str | None, typer.Option()] = None,
    mpp: Annotated[float | None, typer.Option(help="override the slides' MPP")] = None,
    mpp_csv: Annotated[Path | None, typer.Option(help="CSV wsi,mpp of per-slide MPPs")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    devices: Annotated[str | None, typer.Option(help="one worker per device: 0,1 or "
                                                "cuda:0,cuda:1")] = None,
    ray: Annotated[str | None, typer.Option(help="run on Ray: an address (auto, "
                                            "ray://host:10001) or '' for a local cluster")
                   ] = None,
    precision: Annotated[str, typer.Option(help="auto (CPU: bf16 where native and it agrees "
                                           "with fp32, else fp32; GPU: bf16/fp16 autocast), "
                                           "fp32, fp16 or bf16 (GPU)")] = "auto",
    num_threads: Annotated[int | None, typer.Option(help="reader threads (default: the "
                                                    "usable cores)")] = None,
    workers: Annotated[int | None, typer.Option(hidden=True,
                                                help="old name of --num-threads")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    max_tiles: Annotated[int | None, typer.Option()] = None,
    save_images: Annotated[bool, typer.Option(help="also save the tiles as PNG in "
                                              "<outdir>/<slide>.images/")] = False,
    shard_spec: Annotated[str | None, typer.Option("--shard", help="i/n for array jobs")] = None,
    force: Annotated[bool, typer.Option("--force/--skip-existing",
                                        help="regenerate existing bags")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    cache: Annotated[Path | None, typer.Option(help="folder caching remote slides that cannot "
                                               "be read in place (SLIDEFLOW_CACHE)")] = None,
) -> None:
    """Feature bags straight from slides (no TFRecords needed).

    Safe to run several times at once on the same folders (each slide is done once); writes
    failures.csv and summary.json to the output folder; exits 1 when any slide failed.
    """
    from ..engine.features import TileSelection, check_run_options, generate_bags
    from ..model import build_feature_extractor, load_plugin

    _set_verbosity(quiet, verbose)
    if cache is not None:  # the environment reaches worker processes too
        os.environ["SLIDEFLOW_CACHE"] = str(cache.expanduser().resolve())
    # every option once, before the model is built (never one identical failure per slide)
    geometry = _geometry(tile_px, tile_um)
    geometry.check_stride(stride_div_of(overlap, stride_div))
    check_run_options(num_threads=num_threads if workers is None else workers, mpp=mpp,
                      device=device, devices=devices,
                      threads_flag="--num-threads" if workers is None else "--workers")
    num_threads = _renamed_option(num_threads, workers, "--num-threads", "--workers")
    if not slides and manifest is None:
        raise typer.BadParameter("give slides (files or folders) or --manifest")
    check_inputs_exist(slides)
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise typer.BadParameter(f"--precision {precision!r}: auto, fp32, fp16 or bf16")
    names = [n.strip() for n in extractor.split(",") if n.strip()]
    per_weights = weights_map(weights, names)
    if feature_plugin:
        load_plugin(feature_plugin)
    jobs = shard(make_jobs(slides or [], manifest, recursive, mpp, mpp_csv), shard_spec)
    selection = TileSelection(qc=None if qc in (None, "none") else qc,
                              qc_threshold=tissue_thresh,
                              stride_div=stride_div_of(overlap, stride_div))
    kwargs: dict = {}
    if batch_size is not None:
        kwargs["batch_size"] = positive_int(batch_size, "--batch-size")
    if device:
        kwargs["device"] = device
    kwargs["mixed_precision"] = precision
    try:
        exts = [build_feature_extractor(n, **kwargs, **({"weights": per_weights[n]}
                                                        if n in per_weights else {}))
                for n in names]
        report = generate_bags(jobs, exts if len(exts) > 1 else exts[0], outdir, geometry,
                               fmt=fmt, normalizer=normalizer,
                               selection=selection, force_regenerate=force, max_tiles=max_tiles,
                               num_threads=num_threads, progress=not quiet, devices=devices,
                               ray=ray_arg(ray), save_images=save_images)
    except SlideflowError as exc:  # the run could not start, or stopped (the folder claimed
        typer.echo(f"error: {exc}", err=True)  # by another run); what was done is recorded
        raise typer.Exit(2) from None
    # summary.json and failures.csv: written by the engine (generate_bags) into outdir
    summary = report.summary(extractors=names, outdir=str(outdir), superseded=report.superseded)
    for o in report.outcomes:
        if o.status == "failed":
            typer.echo(f"FAILED {o.slide}: {o.message}", err=True)
    if not quiet or summary["failed"] or report.errors:
        typer.echo(runlog.human_summary(summary))
    for why in report.errors:
        typer.echo(f"error: {why}", err=True)
    if summary["failed"] and not report.errors:
        typer.echo(f"failures listed in {outdir / 'failures.csv'}", err=True)
    if summary["failed"] or report.errors:
        raise typer.Exit(1)


def _renamed_option(new_value: int | None, old_value: int | None, new: str, old: str
                    ) -> int | None:
    """An option given under its old name works, with one warning line naming the new one."""
    if old_value is None:
        return new_value
    if new_value is not None and new_value != old_value:
        raise typer.BadParameter(f"{old} is the old name of {new}: give {new} only")
    logging.getLogger("slideflow").warning("%s is the old name of %s (same meaning); use %s",
                                           old, new, new)
    return old_value


def _set_verbosity(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.getLogger("slideflow").setLevel(level)


@app.command("extract-tiles")
def extract_tiles(
    project: Path,
    tile_px: Annotated[int, typer.Option()] = 256,
    tile_um: Annotated[str, typer.Option()] = "128",
    qc: Annotated[str | None, typer.Option()] = "otsu",
    img_format: Annotated[str, typer.Option(help="jpg or png")] = "jpg",
    passthrough: Annotated[bool, typer.Option(help="write stored JPEG tiles as they are where "
                                              "output tiles coincide with them")] = True,
    num_threads: Annotated[int | None, typer.Option(help="threads in all (default: the usable "
                                                    "cores)")] = None,
    slides_in_flight: Annotated[int | None, typer.Option(help="slides extracted at once "
                                                         "(default 2; 1 keeps one slide's "
                                                         "files on disk at a time)")] = None,
) -> None:
    """Extract tiles of a project's slides into TFRecords."""
    from ..project.project import load_project

    optional_positive_int(num_threads, "--num-threads")
    optional_positive_int(slides_in_flight, "--slides-in-flight")
    P = load_project(project)
    geo = _geometry(tile_px, tile_um)
    result = P.extract_tiles(geo.tile_px, geo.tile_um, qc=None if qc == "none" else qc,
                             img_format=img_format, passthrough=passthrough,
                             num_threads=num_threads, slides_in_flight=slides_in_flight)
    for note in result.notes:
        typer.echo(f"recovered {note}")
    typer.echo(repr(result))
    for name, why in result.failed.items():
        typer.echo(f"FAILED {name}: {why}", err=True)
    for why in result.errors:
        typer.echo(f"error: {why}", err=True)
    if result.failed or result.errors:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """The `slideflow` script: exit 0 done, 1 when a slide failed, 2 for a usage error."""
    import sys


    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    install_sigterm_handler()  # SLURM's SIGTERM before a requeue frees this run's slide locks
    args = ray_argv(sys.argv[1:] if argv is None else argv)
    raise SystemExit(run_app(app, args, prog_name="slideflow"))


if __name__ == "__main__":
    main()
