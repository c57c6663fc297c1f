"""Many slides: a few in flight, one shared encode pool, a summary and HTML reports.

A slide that fails on a full disk while other slides were being written is tried once more,
alone, after the others: their temporary files may have taken the room it needed.

`run_jobs` schedules `extract_job` over slides (slides in flight x reader threads = the
threads asked for), collects the per-slide results and stops cleanly on an interrupt: running
slides stop at their next batch and discard their temporary files. The research layer
(`slideflow.dataset_work.extract_dataset`) turns a Dataset into the jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from ...io import imgcodec
from ...io.atomic import DISK_FULL_TEXT
from ...io.held_locks import install_sigterm_handler
from ...slide.geometry import TileGeometry
from ...validate import optional_positive_int
from ..outcome import SlideOutcome, Status, try_write_run_files
from ..progress import track_slides
from ..report import write_report
from .job import extract_job
from .results import ExtractionSummary
from .sidecar import ExtractJob, ExtractOptions

log = logging.getLogger("slideflow")


def run_jobs(jobs: Sequence[ExtractJob], tile_px: int | TileGeometry,
             tile_um: float | str | None, opt: ExtractOptions, *,
             num_threads: int | None = None, slides_in_flight: int | None = None,
             progress: bool | None = True, failed: dict[str, str] | None = None,
             on_result: Callable[[SlideOutcome], None] | None = None) -> ExtractionSummary:
    """Extract `jobs` with a few slides in flight; `failed` are slides known to be unusable."""
    install_sigterm_handler()  # slide locks are taken in worker threads: install it here
    start = time.perf_counter()
    geometry = TileGeometry.parse(tile_px, tile_um)  # once, handed down as it is
    summary = ExtractionSummary(geometry.tile_px, geometry.tile_um)
    total = len(jobs) + len(failed or {})
    threads = optional_positive_int(num_threads, "num_threads") or imgcodec.default_threads()
    wanted = optional_positive_int(slides_in_flight, "slides_in_flight") or 2
    in_flight = max(1, min(wanted, len(jobs) or 1, threads))
    read_threads = max(1, threads // in_flight)
    stop = threading.Event()
    with track_slides(total, f"extract {summary.label}", enabled=progress) as bar:
        for name, why in (failed or {}).items():
            summary.results[name] = SlideOutcome(name, Status.FAILED, error=why)
            bar.slide_failed(name, why)
        encode_pool = ThreadPoolExecutor(threads, thread_name_prefix="sf-encode")
        slide_pool = ThreadPoolExecutor(in_flight, thread_name_prefix="sf-slide")
        try:
            queue, limit, retrying = list(jobs), in_flight, False
            later: list[ExtractJob] = []  # failed on a disk others were writing to as well
            running: dict[Future, ExtractJob] = {}
            shared: set[Future] = set()  # ran while another slide was being extracted
            while queue or running or later:
                if not queue and not running:  # the retries, one at a time: alone on the disk
                    queue, later, limit, retrying = later, [], 1, True
                while queue and len(running) < limit:
                    job = queue.pop(0)
                    fut = slide_pool.submit(extract_job, job, geometry, opt,
                                            encode_pool=encode_pool, encode_threads=threads,
                                            read_threads=read_threads,
                                            progress=bar, stop=stop,
                                            preview_width=256 if opt.report else None)
                    if running:
                        shared.update(running, (fut,))
                    running[fut] = job
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    job, was_shared = running.pop(fut), fut in shared
                    shared.discard(fut)
                    r = fut.result()  # only interrupts (KeyboardInterrupt, _Stopped) raise here
                    if was_shared and _disk_full(r):  # the others' files may have taken its room
                        log.info("%s: disk full while other slides were written too; tried "
                                 "again alone once they finish", r.slide)
                        later.append(job)
                        continue
                    if retrying and r.status == Status.DONE:
                        r.notes.append("done when tried again alone after a full disk")
                    _record(r, summary, bar, on_result)
        except BaseException:
            stop.set()  # running slides stop at their next batch and discard their temp files
            raise
        finally:
            slide_pool.shutdown(wait=True, cancel_futures=True)
            encode_pool.shutdown(wait=True, cancel_futures=True)
    order = {j.name: i for i, j in enumerate(jobs)}
    summary.results = dict(sorted(summary.results.items(),
                                  key=lambda kv: (order.get(kv[0], -1), kv[0])))
    summary.seconds = time.perf_counter() - start
    return summary


def _record(r: SlideOutcome, summary: ExtractionSummary, bar: Any,
            on_result: Callable[[SlideOutcome], None] | None) -> None:
    """A slide's final outcome: into the summary, the progress line and `on_result`."""
    summary.results[r.slide] = r
    if r.status == Status.DONE:
        bar.slide_done(r.slide, r.tiles)
    elif r.status == Status.FAILED:
        bar.slide_failed(r.slide, r.message or "")
    else:
        bar.slide_skipped(r.slide, r.reason or "")
    if on_result is not None:
        on_result(r)


def _disk_full(r: SlideOutcome) -> bool:
    """Whether the slide failed on a full disk (`io.atomic.disk_full_text`)."""
    return r.status == Status.FAILED and (r.error or "").startswith(DISK_FULL_TEXT)


def write_run_outputs(summary: ExtractionSummary, jobs: Sequence[ExtractJob],
                      opt: ExtractOptions) -> ExtractionSummary:
    """With `opt.report`, each output folder gets the run's files for its slides:
    extraction_report.html, summary.json and failures.csv. A file that cannot be written (a
    full disk) is a run error in `summary.errors`, never a lost summary."""
    if not opt.report:
        return summary
    by_dir: dict[Any, list[str]] = {}
    for j in jobs:
        by_dir.setdefault(j.outdir, []).append(j.name)
    for outdir, names in by_dir.items():
        report = outdir / "extraction_report.html"
        try:
            summary.reports.append(write_report(report, summary, names, opt))
        except OSError as exc:
            summary.errors.append(f"{report}: report not written ({exc})")
            log.warning("%s: report not written (%s)", report, exc)
        outcomes = [summary.results[n] for n in names if n in summary.results]
        why = try_write_run_files(outdir, outcomes, summary.seconds, tile_px=summary.tile_px,
                                  tile_um=summary.tile_um, outdir=str(outdir))
        if why is not None:
            summary.errors.append(why)
    return summary
