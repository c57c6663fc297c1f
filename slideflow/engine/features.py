"""Feature bags for MIL: slides or TFRecords -> extractor -> one bag per slide.

`generate_feature_bags` drives the streaming engine (`engine.pipeline`) once per slide with a
`BagWriter` sink (through `engine.bag_runner`, serially, one process per device, or on Ray),
writes `bags_config.json` (Slideflow layout + our provenance) and resumes: a bag is reused only
when its recorded settings match the request. One slide's job lives in `engine.slide_job`; its
public names are re-exported here (``slideflow.features`` is the documented path).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, SlideflowError
from ..io.base import FORMATS
from ..norm import resolve
from ..slide.geometry import TileGeometry
from ..validate import mpp_value, optional_positive_int, positive_int, renamed
from .bag_runner import BagOptions, claim_target, make_target, run_serial
from .distributed import device_list
from .distributed.devices import run_devices
from .distributed.ray_runner import run_ray
from .outcome import RunReport, SlideOutcome, Status, try_write_run_files
from .protocols import Extractor
from .selection import DEFAULT_QC, TileSelection
from .slide_job import (
    SlideJob,
    bags_config,
    iter_job_features,
    jobs_from_paths,
    resolve_extractor,
    resolve_normalizer,
    source_identity,
)

__all__ = [
    "BagsReport", "SlideJob", "TileSelection", "bags_config", "check_run_options", "generate_bags",
    "generate_feature_bags", "iter_job_features", "jobs_from_paths", "resolve_extractor",
    "resolve_normalizer", "source_identity",
]


@dataclass
class BagsReport(RunReport):
    """What a generate_feature_bags run did, slide by slide (`outcomes`, one
    `engine.outcome.SlideOutcome` each); `superseded` maps each folder a forced run moved files
    into (`<outdir>/.superseded-<UTC time>/`) to the files moved. The run's summary.json and
    failures.csv are in `outdir`; `errors` says when they could not be written."""

    outdir: Path
    seconds: float = 0.0
    outcomes: list[SlideOutcome] = field(default_factory=list, repr=False)
    superseded: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> dict[str, dict[str, Any]]:
        return {o.slide: {"tiles": o.tiles, "seconds": o.seconds} for o in self.outcomes
                if o.status == Status.DONE}

    @property
    def skipped(self) -> list[str]:
        """Slides whose bags were current (reused)."""
        return self.reused

    def __repr__(self) -> str:
        busy = f", {len(self.busy)} busy" if self.busy else ""
        moved = sum(len(v) for v in self.superseded.values())
        aside = f", {moved} stale file(s) moved aside" if moved else ""
        return (f"BagsReport({self.outdir}: {len(self.done)} done, {len(self.skipped)} reused"
                f"{busy}, {len(self.failed)} failed, {self.tiles} tiles in "
                f"{self.seconds:.1f} s{aside})")


def generate_bags(
    jobs: Sequence[SlideJob],
    extractor: Extractor | str | Sequence[Extractor | str],
    outdir: str | Path,
    tile_px: int | TileGeometry,
    tile_um: float | str | None = None,
    *,
    normalizer: Any = None,
    selection: TileSelection | None = None,
    fmt: str = "pt",
    force_regenerate: bool = False,
    min_tiles: int = 0,
    max_tiles: int | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
    ray: Any = None,
    save_images: bool = False,
    batch_size: int | None = None,
) -> BagsReport:
    """Featurise every job into `outdir`; one failing slide is reported, the rest go on.

    `tile_px` may be a `TileGeometry` (then no `tile_um`). `extractor` may be a list: each tile batch is read once and fed to every extractor, whose
    bags go to `outdir/<extractor name>/`. Slides locked by another live process are skipped
    (`report.busy`). `devices` (e.g. `['cuda:0', 'cuda:1']`) runs one worker process per
    device; `ray` (True for a local cluster, or an address) runs the slides on a Ray cluster
    (see docs/cli.md). `batch_size` is the model batch of this run (default: each extractor's
    own; the extractor objects are not changed). `save_images` also writes the tiles as PNG to `<outdir>/<slide>.images/`.
    The run's summary.json and failures.csv are written to `outdir` (also when interrupted).
    """
    geometry = TileGeometry.parse(tile_px, tile_um)  # once, handed down as it is
    geometry.check_stride((selection or TileSelection()).stride_div)
    num_threads = optional_positive_int(num_threads, "num_threads")
    batch_size = optional_positive_int(batch_size, "batch_size")
    if devices:
        from ..model.extractors.base import check_device  # torch

        devices = [str(check_device(d)) for d in device_list(devices)]
    min_tiles = positive_int(min_tiles, "min_tiles", minimum=0)
    max_tiles = optional_positive_int(max_tiles, "max_tiles")
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    many = isinstance(extractor, (list, tuple))
    extractors = [resolve_extractor(e) for e in (extractor if many else [extractor])]
    names = [e.name for e in extractors]
    if len(set(names)) != len(names):
        raise ValueError(f"extractors given twice: {names}")
    normalizer = resolve(normalizer)
    opts = BagOptions(geometry, selection or TileSelection(), force_regenerate,
                      min_tiles, max_tiles, seed, num_threads, save_images)
    outdir = Path(outdir)
    # AtlasPatch: every extractor writes into the same files (features/<name>), one folder
    shared = not many or fmt == "atlaspatch"
    targets = [make_target(e, outdir if shared else outdir / e.name, normalizer, opts, fmt,
                           batch_size) for e in extractors]
    start = time.perf_counter()
    superseded: dict[str, list[str]] = {}
    for t in targets:  # one configuration per folder, claimed before any bag is written
        try:
            claim = claim_target(t, force_regenerate)
        except OSError as exc:  # e.g. a full disk: the run cannot start; say so
            raise SlideflowError(f"{t.outdir}: cannot claim the folder for this run, its "
                                 f"configuration was not written ({exc}); no bag was written"
                                 ) from exc
        if claim.moved:
            superseded[str(claim.superseded)] = [str(p.relative_to(t.outdir))
                                                 for p in claim.moved]
    jobs = list(jobs)
    outcomes: list[SlideOutcome] = []
    extra = {"extractors": names, "outdir": str(outdir)}
    try:
        if ray is not None and ray is not False:
            outcomes = run_ray(jobs, targets, opts, normalizer=normalizer, ray=ray,
                               progress=progress)
        elif devices:
            outcomes = run_devices(jobs, targets, opts, normalizer=normalizer,
                                   devices=devices, progress=progress)
        else:
            run_serial(jobs, targets, opts, normalizer=normalizer, progress=progress,
                       outcomes=outcomes)
    except BaseException as exc:  # stopped (Ctrl-C, SIGTERM, the folder claimed by another
        partial = BagsReport(outdir, time.perf_counter() - start,  # run): what was done is
                             outcomes=outcomes, superseded=superseded)  # recorded
        partial.errors += filter(None, [try_write_run_files(
            outdir, outcomes, partial.seconds, **extra, interrupted=type(exc).__name__)])
        exc.partial_report = partial  # type: ignore[attr-defined]
        raise
    report = BagsReport(outdir, time.perf_counter() - start, outcomes=outcomes,
                        superseded=superseded)
    report.errors += filter(None, [try_write_run_files(outdir, outcomes, report.seconds,
                                                       **extra, superseded=superseded)])
    return report


def check_run_options(*, num_threads: Any = None, mpp: Any = None, device: Any = None,
                      devices: Any = None, threads_flag: str = "--num-threads") -> None:
    """Run-wide options checked once where they enter (the CLI), before any model is built:
    a bad value is one error, never the same failure for every slide."""
    optional_positive_int(num_threads, threads_flag)
    if mpp is not None:
        mpp_value(mpp, "--mpp")
    if device is not None or devices:
        from ..model.extractors.base import check_device  # torch

        for d in ([device] if device is not None else []) + (device_list(devices) if devices
                                                            else []):
            check_device(d)


def generate_feature_bags(
    jobs: Sequence[SlideJob],
    extractor: Extractor | str,
    outdir: str | Path | None,
    tile_px: int | TileGeometry,
    tile_um: float | str | None = None,
    *,
    normalizer: Any = None,
    force_regenerate: bool = False,
    batch_size: int | None = None,
    num_threads: int | None = None,
    num_workers: int | None = None,
    format: str = "pt",
    min_tiles: int = 0,
    max_tiles: int | None = None,
    seed: int = 0,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
    ray: Any = None,
    **selection: Any,
) -> BagsReport:
    """Bags for `jobs` with the same tile-selection options as `extract_tiles` (`qc`, ROIs,
    whitespace/grayspace...; `qc` defaults to `DEFAULT_QC`, as extraction's does).
    `Dataset.generate_feature_bags` makes the jobs (from its TFRecords
    when they exist, otherwise from the slides), so the engine never calls back into a Dataset.

    `num_threads` sets the reader threads (`num_workers`, its old name, still works with a
    DeprecationWarning); `batch_size` the model batch. `devices` runs one
    worker process per device, `ray` runs on a Ray cluster (see `generate_bags`). Default `outdir`:
    `<first tfrecords folder>/../pt_files/<extractor name>` is left to the Project; a Dataset
    call without `outdir` raises.
    """
    batch_size = optional_positive_int(batch_size, "batch_size")
    num_threads = optional_positive_int(
        renamed(num_threads, num_workers, "num_threads", "num_workers"), "num_threads")
    kwargs = {"batch_size": batch_size} if batch_size and isinstance(extractor, str) else {}
    extractor = resolve_extractor(extractor, **kwargs)  # the caller's object is not changed:
    if outdir is None:
        raise SlideflowError("generate_feature_bags needs outdir= (Project.generate_feature_bags "
                             "defaults it to <project>/pt_files/<extractor>)")
    unknown = set(selection) - set(TileSelection.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown tile-selection options {sorted(unknown)}; valid: "
                        f"{sorted(TileSelection.__dataclass_fields__)}")
    selection = {"qc": DEFAULT_QC, **selection}  # the same default as extraction and the CLI
    return generate_bags(
        jobs, extractor, outdir, tile_px, tile_um,
        normalizer=normalizer, selection=TileSelection(**selection), fmt=format,
        force_regenerate=force_regenerate, min_tiles=min_tiles, max_tiles=max_tiles, seed=seed,
        num_threads=num_threads, progress=progress, devices=devices, ray=ray,
        batch_size=batch_size,  # the run's batch, an argument (never set on `extractor`)
    )
