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
from typing import Annotated

import click
import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="slideflow: whole-slide images to tiles and feature vectors.")


def _tile_um(value: str) -> float | str:
    try:
        return float(value) if not value.lower().endswith("x") else value
    except ValueError:
        raise typer.BadParameter(f"{value!r}: microns (e.g. 128) or a magnification ('20x')") from None


def _expand(paths: list[Path]) -> list[Path]:
    from .slide import find_slides, is_slide

    out: list[Path] = []
    for p in paths:
        if p.is_dir() and not is_slide(p):
            out.extend(find_slides(p))
        else:
            out.append(p)
    return out


def shard(items: list, spec: str | None) -> list:
    """Items of shard `i/n` (0-based i); SLURM array variables when `spec` is None."""
    if spec is None:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return items
        spec = f"{int(task) - int(os.environ.get('SLURM_ARRAY_TASK_MIN', 0))}/{count}"
    i, n = (int(v) for v in spec.split("/"))
    if not 0 <= i < n:
        raise typer.BadParameter(f"--shard {spec}: need 0 <= i < n")
    return items[i::n]


@app.command()
def info(slide: Path, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Dimensions, levels, MPP, vendor and associated images of a slide."""
    from .slide.backends import open_reader

    r = open_reader(slide)
    data = {"path": str(slide), "backend": r.name, "vendor": r.vendor, "dimensions": r.dimensions,
            "mpp": r.mpp, "levels": [{"dimensions": d, "downsample": ds} for d, ds in
                                     zip(r.level_dimensions, r.level_downsamples)],
            "associated_images": sorted(r.associated_images)}
    typer.echo(json.dumps(data, indent=2) if as_json else
               "\n".join(f"{k:18} {v}" for k, v in data.items()))


@app.command()
def preview(
    slide: Path,
    tile_px: Annotated[int, typer.Option()] = 256,
    tile_um: Annotated[str, typer.Option()] = "128",
    qc: Annotated[str | None, typer.Option(help="otsu, blur or both")] = "otsu",
    mpp: Annotated[float | None, typer.Option()] = None,
    rois: Annotated[Path | None, typer.Option()] = None,
    width: Annotated[int, typer.Option()] = 1024,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("preview.png"),
) -> None:
    """Write a PNG of the slide with the tissue mask, ROIs and kept tiles."""
    from .slide.wsi import WSI

    wsi = WSI(slide, tile_px, _tile_um(tile_um), mpp=mpp, rois=rois)
    if qc:
        wsi.qc(qc)
    wsi.preview(width=width).save(output)
    typer.echo(f"{wsi}\nwrote {output}")


@app.command()
def features(
    slides: Annotated[list[Path], typer.Argument(help="slide files, DICOM folders or folders")],
    extractor: Annotated[str, typer.Option("-e", "--extractor")] = "efficientnet_lite0_imagenet",
    outdir: Annotated[Path, typer.Option("-o", "--outdir")] = Path("bags"),
    tile_px: Annotated[int, typer.Option()] = 224,
    tile_um: Annotated[str, typer.Option()] = "112",
    fmt: Annotated[str, typer.Option("--format", help="pt, h5 or zarr")] = "pt",
    qc: Annotated[str | None, typer.Option(help="otsu, blur, both or none")] = "otsu",
    weights: Annotated[str | None, typer.Option(help="local weights file or folder")] = None,
    feature_plugin: Annotated[Path | None, typer.Option(help="python file registering "
                                                        "extractors")] = None,
    normalizer: Annotated[str | None, typer.Option()] = None,
    mpp: Annotated[float | None, typer.Option(help="override the slides' MPP")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    max_tiles: Annotated[int | None, typer.Option()] = None,
    shard_spec: Annotated[str | None, typer.Option("--shard", help="i/n for array jobs")] = None,
    force: Annotated[bool, typer.Option(help="regenerate existing bags")] = False,
) -> None:
    """Feature bags straight from slides (no TFRecords needed)."""
    from .features import TileSelection, generate_bags, jobs_from_paths
    from .model import build_feature_extractor, load_plugin
    from .slide.geometry import check_tile_geometry
    from .validate import positive_int

    check_tile_geometry(tile_px, _tile_um(tile_um))  # before the model is built
    if feature_plugin:
        load_plugin(feature_plugin)
    kwargs = {"weights": weights} if weights else {}
    if batch_size is not None:
        kwargs["batch_size"] = positive_int(batch_size, "--batch-size")
    ext = build_feature_extractor(extractor, **kwargs)
    paths = shard(_expand(slides), shard_spec)
    jobs = jobs_from_paths(paths, mpp=mpp)
    qc_value = None if qc in (None, "none") else qc
    report = generate_bags(jobs, ext, outdir, tile_px, _tile_um(tile_um), fmt=fmt,
                           normalizer=normalizer, selection=TileSelection(qc=qc_value),
                           force_regenerate=force, max_tiles=max_tiles)
    typer.echo(repr(report))
    for name, why in report.failed.items():
        typer.echo(f"FAILED {name}: {why}", err=True)
    if report.failed and not report.done and not report.skipped:
        raise typer.Exit(1)


@app.command("extract-tiles")
def extract_tiles(
    project: Path,
    tile_px: Annotated[int, typer.Option()] = 256,
    tile_um: Annotated[str, typer.Option()] = "128",
    qc: Annotated[str | None, typer.Option()] = "otsu",
    img_format: Annotated[str, typer.Option(help="jpg or png")] = "jpg",
) -> None:
    """Extract tiles of a project's slides into TFRecords."""
    from .project import load_project

    P = load_project(project)
    result = P.extract_tiles(tile_px, _tile_um(tile_um), qc=None if qc == "none" else qc,
                             img_format=img_format)
    typer.echo(repr(result))


@app.command()
def extractors() -> None:
    """List every known extractor (installed or not)."""
    from .model import list_extractors

    typer.echo(list_extractors().to_string())


def _register_extra_commands() -> None:
    from .cli_encode import register

    register(app)


_register_extra_commands()


def main() -> None:
    from .errors import SlideflowError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        app(standalone_mode=False)
    except click.exceptions.Exit as exc:  # typer.Exit
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:  # usage errors: click's own message, exit 2
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        typer.echo("Aborted.", err=True)
        raise SystemExit(130) from None
    except SlideflowError as exc:  # a clear message, never a traceback
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2 if isinstance(exc, ValueError) else 1) from None


if __name__ == "__main__":
    main()
