"""One slide's feature bags, made safely next to other processes: the unit of work that the
serial loop, the one-process-per-device runner and the Ray runner all share.

`process_job` checks which bags are missing or stale, claims the slide with a lock file per
output folder (`slideflow.io.locks`), removes temporary files of dead runs, reads the tiles
once and feeds every extractor (`pipeline.run_many`), and writes each bag atomically. A slide
locked by a live process comes back `busy` (skipped, not failed); a bad slide comes back
`failed` with its error, never raising (`engine.outcome.SlideOutcome`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import BagsConfigMismatchError, SlideflowError, exception_text
from ..io import imgcodec
from ..io.atomic import disk_full_error, disk_full_text, tmp_prefix
from ..io.bags import BagWriter, bag_path, list_bags, read_bag_meta, slide_of
from ..io.bags_config import config_file, normalize, own_extractor
from ..io.claim import claim_config, move_aside, verify_claim
from ..io.location import is_url
from ..io.locks import SlideLock, clean_stale_temps
from ..io.names import check_output_name, confined
from ..io.npz import index_path_for
from ..remote.fetch import begin_counting, end_counting
from ..remote.identity import url_identity
from ..slide.geometry import TileGeometry
from .outcome import SlideOutcome, Status
from .pipeline import run_many
from .progress import track_slides
from .protocols import Extractor
from .selection import TileSelection
from .slide_job import (
    SlideJob,
    _bag_is_current,
    _check_record_count,
    _job_source,
    bags_config,
    source_identity,
)

log = logging.getLogger("slideflow")

#: outcome statuses (`engine.outcome.Status`; the names stay importable from here)
DONE, REUSED, BUSY, FAILED = Status.DONE, Status.REUSED, Status.BUSY, Status.FAILED


@dataclass
class BagTarget:
    """One extractor and where its bags go. Picklable without the extractor (workers rebuild
    it from `cfg` on their own device)."""

    outdir: Path
    fmt: str
    cfg: dict[str, Any]
    request: dict[str, Any]
    extractor: Extractor | None = field(default=None, repr=False)
    batch_size: int | None = None

    @property
    def run_batch_size(self) -> int:
        """The model batch of this run: the one asked for, else the extractor's own."""
        return self.batch_size or self.extractor.batch_size

    def without_extractor(self) -> BagTarget:
        """A copy to send to a worker process (which rebuilds the model from `cfg`)."""
        bs = self.batch_size or getattr(self.extractor, "batch_size", None)
        return replace(self, extractor=None, batch_size=bs)

    def with_extractor(self, extractor: Extractor) -> BagTarget:
        return replace(self, extractor=extractor)


@dataclass
class BagOptions:
    """Everything but the extractors that decides a run (picklable, sent to workers)."""

    geometry: TileGeometry
    selection: TileSelection
    force: bool = False
    min_tiles: int = 0
    max_tiles: int | None = None
    seed: int = 0
    num_threads: int | None = None
    save_images: bool = False

    @property
    def tile_px(self) -> int:
        return self.geometry.tile_px

    @property
    def tile_um(self) -> float | int | str:
        return self.geometry.tile_um


def make_target(extractor: Extractor, outdir: str | Path, normalizer: Any, opts: BagOptions,
                fmt: str, batch_size: int | None = None) -> BagTarget:
    """A target with its bags_config (claimed on the folder by `claim_target`)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cfg = bags_config(extractor, normalizer, opts.tile_px, opts.tile_um, opts.selection, fmt)
    request = {"config": {k: own_extractor(cfg[k]) if k == "extractor" else cfg[k]
                          for k in ("extractor", "normalizer", "num_features", "tile_px",
                                    "tile_um")},
               "selection": opts.selection.selection_dict(), "max_tiles": opts.max_tiles,
               "seed": opts.seed}
    own_name = (request["config"]["extractor"].get("kwargs") or {}).get("name")
    if own_name is not None and extractor.name != own_name:  # an alias (AtlasPatch's names)
        request["encoder"] = extractor.name
    if cfg["provenance"]["precision"] != "fp32":  # bf16/fp16 bags are other bags
        request["precision"] = cfg["provenance"]["precision"]
    return BagTarget(outdir, fmt, cfg, request, extractor, batch_size)


def config_of(t: BagTarget) -> Path:
    """The target's config file (AtlasPatch folders: one per extractor)."""
    return config_file(t.outdir, t.fmt, t.cfg["provenance"]["extractor"])


def claim_target(t: BagTarget, force: bool) -> Any:
    """Claim the target's folder for its configuration (`slideflow.io.claim`); with `force`,
    also move aside every bag there that the configuration does not describe. Returns the
    `Claim` (where things were moved)."""
    claim = claim_config(config_of(t), t.cfg, force=force)
    if force and t.fmt != "atlaspatch":  # AtlasPatch files hold several extractors: kept
        dest, moved = _supersede_stale(t, claim.superseded)
        claim.superseded, claim.moved = dest, claim.moved + moved
    if claim.moved:
        log.warning("%s: moved %d file(s) the new configuration does not describe to %s",
                    t.outdir, len(claim.moved), claim.superseded)
    return claim


def _supersede_stale(t: BagTarget, dest: Path | None) -> tuple[Path | None, list[Path]]:
    """Move bags of other settings or formats (with their index and images) aside. A bag a
    live process is writing (locked) is left to it: its commit re-checks the config."""
    want = normalize(t.request)
    moved: list[Path] = []
    for bag in list_bags(t.outdir):
        name = slide_of(bag)
        with SlideLock(t.outdir, name) as lock:
            if not lock.acquired:
                continue
            if bag == bag_path(t.outdir, name, t.fmt) and (
                    read_bag_meta(t.outdir, name, t.fmt) or {}).get("request") == want:
                continue  # described by the configuration
            files = [bag, index_path_for(bag), t.outdir / f"{name}.images"]
            dest, done = move_aside(files, t.outdir, dest)
            moved += done
    return dest, moved


def job_cost(job: SlideJob) -> int:
    """Bytes of a job's input: the scheduling key (longest first) for parallel runners."""
    path = job.tfrecord if job.tfrecord is not None else job.slide_path
    try:
        if is_url(path):  # an object's size (a listing for a prefix; 0 for DICOMweb)
            return int(url_identity(path).get("bytes") or 0)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except (OSError, AttributeError, SlideflowError):
        return 0


def longest_first(jobs: list[SlideJob]) -> list[SlideJob]:
    """Jobs by decreasing size (stable), so that the longest slides do not finish last."""
    return sorted(jobs, key=job_cost, reverse=True)


def process_job(job: SlideJob, targets: list[BagTarget], opts: BagOptions, *,
                normalizer: Any = None, on_tiles: Any = None) -> SlideOutcome:
    """Make the missing bags of one slide (see module doc). Never raises for a bad slide."""
    out = SlideOutcome(job.name, REUSED)
    counting = begin_counting()  # requests and bytes of a slide read from a URL
    try:
        return _process(job, targets, opts, normalizer, on_tiles, out)
    finally:
        out.fetched = end_counting(counting)


def _process(job: SlideJob, targets: list[BagTarget], opts: BagOptions, normalizer: Any,
             on_tiles: Any, out: SlideOutcome) -> SlideOutcome:
    t0 = time.perf_counter()
    identity = None

    def current(t: BagTarget) -> bool:  # an unreadable source (or mask) is never current
        return identity is not None and _bag_is_current(t.outdir, job.name, t.fmt, t.request,
                                                        identity)

    todo = targets
    try:
        _check_outputs(job.name, targets)
        identity = source_identity(job)
        todo = targets if opts.force else [t for t in targets if not current(t)]
        if not todo:
            return out
        with contextlib.ExitStack() as locks:
            for outdir in dict.fromkeys(t.outdir for t in todo):  # AtlasPatch targets share one
                lock = locks.enter_context(SlideLock(outdir, job.name))
                if not lock.acquired:
                    out.status, out.reason = BUSY, f"locked by {lock.holder()}"
                    return out
                if lock.took_over:
                    out.notes.append(f"took over the stale lock of {lock.took_over} in {outdir}")
            if not opts.force:  # another process may have finished it since we looked
                todo = [t for t in todo if not current(t)]
                if not todo:
                    return out
            for outdir in dict.fromkeys(t.outdir for t in todo):
                for p in clean_stale_temps(outdir, job.name):
                    log.info("%s: removed %s left by a dead run", job.name, p.name)
                    out.notes.append(f"removed {p.name} left by a dead run")
            out.tiles = _write_bags(job, todo, opts, normalizer, on_tiles)
            out.status = DONE
    except BagsConfigMismatchError:
        raise  # the folder itself changed hands: the run stops (its summary is still written)
    except Exception as exc:  # anything else is this slide's failure; the batch goes on
        out.fail(*failure_text(exc, [t.outdir for t in todo]))
        # the progress line and the caller's summary report it (once)
        log.debug("%s: failed (%s: %s)", job.name, out.error_type, out.error, exc_info=True)
    out.seconds = time.perf_counter() - t0
    return out


def _check_outputs(name: str, targets: list[BagTarget]) -> None:
    """The slide's name must be one safe file name and its bags must land inside their
    folders (a manifest sample_id of '../x' or '/abs/x' is this slide's error)."""
    check_output_name(name, "slide name (sample_id)")
    for t in targets:
        confined(t.outdir, bag_path(t.outdir, name, t.fmt))


def failure_text(exc: BaseException, outdirs: list[Path]) -> tuple[str, str]:
    """(error type, reason) of a failed slide; a full disk says where and what to do."""
    full = disk_full_text(exc, ", ".join(str(d) for d in dict.fromkeys(outdirs)))
    if full is not None:
        return type(disk_full_error(exc)).__name__, full
    return type(exc).__name__, exception_text(exc)


def _write_bags(job: SlideJob, todo: list[BagTarget], opts: BagOptions, normalizer: Any,
                on_tiles: Any) -> int:
    """Read the slide once, run every extractor, commit every bag; returns the tile count."""
    first = todo[0].extractor
    source, extent, meta = _job_source(job, opts.geometry, opts.selection,
                                       todo[0].run_batch_size, opts.num_threads,
                                       opts.max_tiles, opts.seed, first)
    with contextlib.ExitStack() as writers:
        if opts.save_images:  # committed after the bags (exit order), discarded on error
            source = writers.enter_context(_ImageDir(todo[0].outdir, job.name)).tee(source)
        sinks = []
        for t in todo:
            ext = t.extractor
            writer_meta = {**meta, "request": t.request, "source_identity": source_identity(job),
                           "extractor": ext.name,
                           "tile_px": opts.tile_px, "tile_um": opts.tile_um}
            w = writers.enter_context(BagWriter(t.outdir, job.name, t.fmt,
                                                num_features=ext.num_features,
                                                patch_size_level0=extent, meta=writer_meta))
            sinks.append(_finite_only(w.append, job.name))
        counted = _count_tiles(sinks[0], on_tiles)
        tiles = run_many(source, [t.extractor for t in todo], [counted, *sinks[1:]],
                         normalizer=normalizer,
                         batch_sizes=[t.run_batch_size for t in todo]).tiles
        _check_record_count(job, tiles)
        need = max(opts.min_tiles, 1)
        if tiles < need:
            qc = ("as extracted" if job.tfrecord is not None else str(job.mask)
                  if job.mask is not None else opts.selection.qc_record())
            raise SlideflowError(f"{job.name}: {tiles} tiles after tile selection (qc={qc!r}), "
                                 f"fewer than min_tiles={need}; no bag written")
        for t in todo:  # the folders still hold our configuration: commit (writers' exit)
            verify_claim(config_of(t), t.cfg)
    return tiles


class _ImageDir:
    """Tiles as PNG in `<outdir>/<slide>.images/<x>_<y>.png` (top-left level-0 px), built in
    a temporary folder and moved into place with the bags."""

    def __init__(self, outdir: Path, name: str):
        import tempfile

        self.dest = outdir / f"{name}.images"
        self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(self.dest.name), dir=outdir))

    def tee(self, source: Any) -> Any:
        for tiles, coords in source:
            for tile, (x, y) in zip(tiles, coords.tolist()):
                (self.tmp / f"{x}_{y}.png").write_bytes(imgcodec.encode(tile, "png", 100))
            yield tiles, coords

    def __enter__(self) -> _ImageDir:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        import shutil

        if exc_type is None:
            if self.dest.exists():
                shutil.rmtree(self.dest)
            os.replace(self.tmp, self.dest)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _finite_only(sink: Any, name: str) -> Any:
    """A sink that refuses NaN/inf rows: a NaN bag must never look finished."""
    import numpy as np

    def checked(f: Any, c: Any) -> None:
        if not np.isfinite(f).all():
            raise SlideflowError(f"{name}: {int((~np.isfinite(f)).any(axis=1).sum())} feature "
                                 "rows hold NaN/inf (non-finite weights or inputs); no bag "
                                 "written")
        sink(f, c)

    return checked


def _count_tiles(sink: Any, on_tiles: Any) -> Any:
    if on_tiles is None:
        return sink

    def counted(f: Any, c: Any) -> None:
        sink(f, c)
        on_tiles(len(f))

    return counted


def run_serial(jobs: list[SlideJob], targets: list[BagTarget], opts: BagOptions, *,
               normalizer: Any = None, progress: bool = True,
               outcomes: list[SlideOutcome] | None = None) -> list[SlideOutcome]:
    """Every job in this process, in the given order; outcomes are appended to `outcomes`
    (when given) as they come, so an interrupted run still tells what it did."""
    outcomes = [] if outcomes is None else outcomes
    with track_slides(len(jobs), "features", enabled=progress) as bar:
        for job in jobs:
            o = process_job(job, targets, opts, normalizer=normalizer,
                            on_tiles=bar.advance_tiles)
            report_outcome(bar, o)
            outcomes.append(o)
    return outcomes


def report_outcome(bar: Any, o: SlideOutcome) -> None:
    """Forward one outcome to a `SlideProgress`."""
    bar.add_fetched(o.fetched)
    if o.status == DONE:
        bar.slide_done(o.slide, o.tiles, o.fetched)
    elif o.status == REUSED:
        bar.slide_skipped(o.slide, "bag exists with the same settings")
    elif o.status == BUSY:
        bar.slide_skipped(o.slide, o.reason or "locked by another process")
    else:
        bar.slide_failed(o.slide, o.message or "")


def worker_name(device: Any = None) -> str:
    """host:pid[/device], recorded with outcomes of parallel runs."""
    import socket

    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{base}/{device}" if device is not None else base
