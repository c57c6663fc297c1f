"""Command-line arguments turned into what the engine takes: slides and URLs expanded, a
manifest or MPP table read into jobs, shards, stride, per-extractor weights and Ray's argv.
Kept apart from the typer commands (`commands`) so each stays short."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import typer

from ..io.location import is_url
from ..io.manifest import parse_spacing, read_manifest
from ..slide import expand_slides, slide_name


def expand_paths(paths: list, recursive: bool = True) -> list:
    """Slides given: local paths by the one slide rule (`slideflow.slide.expand_slides`:
    files, DICOM folders, the slides inside other folders), URLs as they are, a URL prefix
    ending in '/' listed (`slideflow.slide.remote_list.find_remote_slides`)."""
    out: list = []
    for p in paths:
        if is_url(p):
            from ..slide.remote_list import find_remote_slides

            out.extend(find_remote_slides(p, recursive) if p.endswith("/") else [p])
        else:
            out.extend(expand_slides([p], recursive))
    return out


def shard(items: list, spec: str | None) -> list:
    """Items of shard `i/n` (0-based i); SLURM array variables when `spec` is None."""
    if spec is None:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return items
        try:
            step = int(os.environ.get("SLURM_ARRAY_TASK_STEP") or 1)  # --array=0-30:10
            first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
            spec = f"{(int(task) - first) // max(step, 1)}/{count}"
        except ValueError:
            raise typer.BadParameter("SLURM_ARRAY_TASK_* variables are not integers") from None
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard {spec!r}: give i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise typer.BadParameter(f"--shard {spec}: need 0 <= i < n")
    return items[i::n]


def stride_div_of(overlap: float | None, stride_div: int | None) -> int:
    """--overlap (fraction of a tile shared with the next) or --stride-div -> stride_div."""
    if overlap is None:
        return stride_div or 1
    if stride_div is not None:
        raise typer.BadParameter("give --overlap or --stride-div, not both")
    if not 0 <= overlap < 1:
        raise typer.BadParameter(f"--overlap {overlap}: a fraction in [0, 1)")
    div = round(1 / (1 - overlap))
    if abs(1 - 1 / div - overlap) > 1e-6:
        raise typer.BadParameter(f"--overlap {overlap}: tiles step by tile/n, so the overlap "
                                 "must be 1 - 1/n (0, 0.5, 0.75, ...)")
    return div


def read_mpp_csv(path: Path) -> dict[str, float]:
    """{slide name or file name: mpp} from a CSV with columns `wsi,mpp`."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"wsi", "mpp"} <= set(rows[0]):
        raise typer.BadParameter(f"{path}: --mpp-csv needs the columns wsi,mpp")
    out = {}
    for i, r in enumerate(rows, start=2):
        mpp = parse_spacing(r["mpp"], f"{path}, line {i}")
        if mpp is not None:
            out[r["wsi"].strip()] = mpp
    return out


def make_jobs(slides: list[Path], manifest: Path | None, recursive: bool, mpp: float | None,
          mpp_csv: Path | None) -> list:
    from ..engine.features import SlideJob

    jobs = []
    if manifest is not None:
        for row in read_manifest(manifest):
            jobs.append(SlideJob(name=row.sample_id, slide_path=row.image_path,
                                 mpp=row.mpp if row.mpp is not None else mpp, mask=row.mask_path,
                                 mpp_source="manifest" if row.mpp is not None else "--mpp"))
    for p in expand_paths(slides, recursive):
        jobs.append(SlideJob(name=slide_name(p), slide_path=p, mpp=mpp, mpp_source="--mpp"))
    if mpp_csv is not None:
        table = read_mpp_csv(mpp_csv)
        for j in jobs:
            found = table.get(j.name, table.get(getattr(j.slide_path, "name", "")))
            if found is not None:
                j.mpp, j.mpp_source = found, "--mpp-csv"
    from collections import Counter

    dup = sorted(n for n, k in Counter(j.name for j in jobs).items() if k > 1)  # linear
    if dup:
        raise typer.BadParameter(f"several slides share the name(s) {dup}: outputs are named by "
                                 "slide, so rename them or list them in a --manifest with "
                                 "distinct sample_id")
    return jobs


def ray_arg(value: str | None) -> object:
    if value is None:
        return None
    return True if value in ("", "auto-local") else value


def weights_map(weights: str | None, names: list[str]) -> dict[str, str]:
    """--weights PATH (one extractor) or NAME=PATH[,NAME=PATH] -> {name: path}."""
    if not weights:
        return {}
    if "=" not in weights:
        if len(names) > 1:
            raise typer.BadParameter("with several extractors, give --weights NAME=PATH[,...]")
        return {names[0]: weights}
    out = {}
    for item in weights.split(","):
        name, _, path = item.partition("=")
        if name.strip() not in names:
            raise typer.BadParameter(f"--weights {item!r}: {name.strip()!r} is not one of the "
                                     f"extractors {names}")
        out[name.strip()] = path.strip()
    return out


def ray_argv(argv: list[str]) -> list[str]:
    """Let `--ray` be given without an address: a bare `--ray` (last, before another option,
    or before an existing path or a slide URL) means a local Ray cluster."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--ray":
            nxt = out[i + 1] if i + 1 < len(out) else None
            if nxt is None or nxt.startswith("-") or os.path.exists(nxt) or (
                    is_url(nxt) and not nxt.lower().startswith("ray://")):
                out.insert(i + 1, "")
            break
    return out
