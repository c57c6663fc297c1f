"""Feature bags on a Ray cluster (`pip install slideflow[ray]`; `slideflow features --ray
[ADDRESS]`, `generate_bags(..., ray=True | 'auto' | 'ray://head:10001')`).

Actors hold the model: one per GPU when the cluster has GPUs, otherwise one per
`cpus_per_actor` CPUs. Slides are tasks on those actors, handed out longest first (by input
size, a proxy for the tile count) to whichever actor is free. Every node must see the slides
and the output folder at the same paths (a shared filesystem), as in a SLURM setup.

A worker that dies (killed, out of memory, node lost) is restarted by Ray and its slide is
retried (`max_restarts`, `max_task_retries`); the retry finds the dead process's lock stale and
its temporary file orphaned, takes both over and writes the bag through the same atomic writer,
so the result equals a serial run. A slide whose actor cannot be restarted is reported failed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ...errors import SlideflowError
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
from . import driver_threads, worker_extractors

log = logging.getLogger("slideflow")

MAX_RESTARTS = 3


class BagActor:
    """Holds the extractors on one device and processes slides (runs inside a Ray actor)."""

    def __init__(self, targets: list[BagTarget], opts: BagOptions, normalizer: Any,
                 device: str, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.targets = worker_extractors(targets, device)
        self.opts, self.normalizer, self.device = opts, normalizer, device

    def pid(self) -> int:
        return os.getpid()

    def process(self, job: SlideJob) -> SlideOutcome:
        o = process_job(job, self.targets, self.opts, normalizer=self.normalizer)
        o.worker = worker_name(self.device)
        return o


def _connect(ray_mod: Any, spec: Any) -> bool:
    """Connect to (or start) a cluster unless one is connected; True when we started it."""
    if ray_mod.is_initialized():
        return False
    address = None if spec is True or spec in ("", "local") else str(spec)
    ray_mod.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return True


def run_ray(jobs: list[SlideJob], targets: list[BagTarget], opts: BagOptions, *,
            normalizer: Any = None, ray: Any = True, progress: bool = True,
            cpus_per_actor: int = 1, actors: int | None = None) -> list[SlideOutcome]:
    """Process `jobs` on Ray actors; outcomes in the order of `jobs`."""
    try:
        import ray as ray_mod
    except ImportError:
        raise SlideflowError("Ray is not installed: pip install 'slideflow[ray]'") from None

    started = _connect(ray_mod, ray)
    try:
        res = ray_mod.cluster_resources()
        gpus = int(res.get("GPU", 0))
        n = actors or (gpus if gpus else max(1, int(res.get("CPU", 1)) // cpus_per_actor))
        opts_kw: dict[str, Any] = {"max_restarts": MAX_RESTARTS,
                                   "max_task_retries": MAX_RESTARTS}
        if gpus:
            opts_kw["num_gpus"] = 1
            device, threads = "cuda", None
        else:
            opts_kw["num_cpus"] = cpus_per_actor
            device, threads = "cpu", driver_threads()
        remote_cls = ray_mod.remote(**opts_kw)(BagActor)
        shipped = [t.without_extractor() for t in targets]
        pool = [remote_cls.remote(shipped, opts, normalizer, device, threads) for _ in range(n)]
        queue = longest_first(list(jobs))
        outcomes: dict[str, SlideOutcome] = {}
        running: dict[Any, tuple[Any, SlideJob]] = {}
        idle = list(pool)
        with track_slides(len(jobs), f"features on Ray ({n} actors)", enabled=progress) as bar:
            while queue or running:
                while queue and idle:
                    actor, job = idle.pop(0), queue.pop(0)
                    running[actor.process.remote(job)] = (actor, job)
                ready, _ = ray_mod.wait(list(running), num_returns=1)
                for ref in ready:
                    actor, job = running.pop(ref)
                    try:
                        o = ray_mod.get(ref)
                        idle.append(actor)
                    except ray_mod.exceptions.RayActorError as exc:  # restarts exhausted
                        o = SlideOutcome(job.name, FAILED, error_type="WorkerError",
                                         error=f"Ray actor died and could not be restarted: "
                                               f"{exc}")
                    except ray_mod.exceptions.RayError as exc:
                        o = SlideOutcome(job.name, FAILED, error_type=type(exc).__name__,
                                         error=str(exc))
                        idle.append(actor)
                    outcomes[o.slide] = o
                    report_outcome(bar, o)
                if not idle and not running and queue:
                    for job in queue:
                        outcomes[job.name] = SlideOutcome(job.name, FAILED,
                                                          error_type="WorkerError",
                                                          error="no Ray actor left")
                    queue = []
        for actor in pool:
            ray_mod.kill(actor)
        return [outcomes[j.name] for j in jobs]
    finally:
        if started:
            ray_mod.shutdown()
