"""Several GPUs on one machine: one worker process per device (`devices=['cuda:0', 'cuda:1']`,
`slideflow features --devices 0,1`).

Each worker (a spawned process, so CUDA initialises cleanly) rebuilds the extractors from their
configs on its device, opens its own slide readers, and pulls slides from one shared queue,
longest first, so the big slides start early and the devices finish together. Bags go through
`process_job` (locks, atomic writers), so the output equals a one-device run. A worker that
dies takes only its current slide with it: that slide is reported failed and the others go on.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_mod
from typing import Any

from ..bag_runner import (
    FAILED,
    BagOptions,
    BagTarget,
    SlideOutcome,
    longest_first,
    process_job,
    report_outcome,
    worker_name,
)
from ..progress import track_slides
from ..slide_job import SlideJob
from . import device_list, driver_threads, worker_extractors

log = logging.getLogger("slideflow")


def _worker(label: str, device: str, targets: list[BagTarget], opts: BagOptions, normalizer: Any,
            jobs: Any, results: Any, threads: int | None) -> None:
    """Worker process main: build the models, then process jobs until the sentinel."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    me = label
    try:
        mine = worker_extractors(targets, device)
    except Exception as exc:  # no model: report every job we take as failed
        mine, setup_error = None, exc
    while True:
        job = jobs.get()
        if job is None:
            break
        results.put(("start", me, job.name))
        if mine is None:
            o = SlideOutcome(job.name, FAILED, error_type=type(setup_error).__name__,
                             error=f"worker on {device} could not build the extractor: "
                                   f"{setup_error}")
        else:
            o = process_job(job, mine, opts, normalizer=normalizer,
                            on_tiles=lambda n: results.put(("tiles", me, n)))
        o.worker = worker_name(device)
        results.put(("outcome", me, o))
    results.put(("exit", me, None))


def run_devices(jobs: list[SlideJob], targets: list[BagTarget], opts: BagOptions, *,
                normalizer: Any = None, devices: Any, progress: bool = True
                ) -> list[SlideOutcome]:
    """Process `jobs` with one worker per device; outcomes in the order of `jobs`."""
    devs = device_list(devices)
    ctx = mp.get_context("spawn")
    job_q: Any = ctx.Queue()
    res_q: Any = ctx.Queue()
    for job in longest_first(jobs):
        job_q.put(job)
    for _ in devs:
        job_q.put(None)
    threads = driver_threads()
    shipped = [t.without_extractor() for t in targets]
    procs = {}
    for i, d in enumerate(devs):
        label = f"{d}#{i}"
        p = ctx.Process(target=_worker, name=f"sf-device-{label}", daemon=True,
                        args=(label, d, shipped, opts, normalizer, job_q, res_q,
                              threads if d == "cpu" else None))
        p.start()
        procs[label] = p
    outcomes: dict[str, SlideOutcome] = {}
    current: dict[str, str | None] = {}
    alive = set(procs)
    with track_slides(len(jobs), f"features on {len(devs)} devices", enabled=progress) as bar:
        while alive:
            try:
                kind, who, value = res_q.get(timeout=1.0)
            except queue_mod.Empty:
                for who in list(alive):
                    p = procs[who]
                    if not p.is_alive():  # died without saying goodbye
                        alive.discard(who)
                        _lost(who, current.get(who), p.exitcode, outcomes, bar)
                continue
            if kind == "start":
                current[who] = value
            elif kind == "tiles":
                bar.advance_tiles(value)
            elif kind == "outcome":
                current[who] = None
                outcomes[value.slide] = value
                report_outcome(bar, value)
            elif kind == "exit":
                alive.discard(who)
    for p in procs.values():
        p.join(timeout=30)
    for job in jobs:  # slides never taken (all workers died)
        if job.name not in outcomes:
            outcomes[job.name] = SlideOutcome(job.name, FAILED, error_type="WorkerError",
                                              error="no worker left to process it")
    return [outcomes[j.name] for j in jobs]


def _lost(who: str, slide: str | None, code: int | None, outcomes: dict[str, SlideOutcome],
          bar: Any) -> None:
    log.error("worker %s died (exit code %s)", who, code)
    if slide is not None and slide not in outcomes:
        o = SlideOutcome(slide, FAILED, error_type="WorkerError",
                         error=f"worker {who} died (exit code {code}) while on this slide",
                         worker=who)
        outcomes[slide] = o
        report_outcome(bar, o)
