"""Several devices and a Ray cluster give the bags of a serial run, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import slideflow as sf
from slideflow.features import generate_bags, jobs_from_paths
from slideflow.io.atomic import TMP_MARK
from slideflow.io.runlog import FAILURES, SUMMARY

from conftest import CMU, CMU_DICOM, NDPI

GEOMETRY = (112, 224)


def _outputs(folder: Path) -> dict[str, bytes]:
    """The folder's files but the run's own (summary.json: times, host, pid)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in (FAILURES, SUMMARY)}


@pytest.fixture(scope="module")
def extractor():
    return sf.build_feature_extractor("efficientnet_lite0_imagenet", device="cpu",
                                      batch_size=8)


@pytest.fixture(scope="module")
def jobs(slides):
    return jobs_from_paths([CMU, CMU_DICOM, NDPI])


@pytest.fixture(scope="module")
def serial(extractor, jobs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial")
    report = generate_bags(jobs, extractor, out, *GEOMETRY, progress=False)
    assert len(report.done) == 3 and report.tiles == 64
    return out


def test_two_cpu_devices_equal_one(extractor, jobs, serial, tmp_path):
    report = generate_bags(jobs, extractor, tmp_path, *GEOMETRY, progress=False,
                           devices=["cpu", "cpu"])
    assert sorted(report.done) == sorted(j.name for j in jobs) and not report.failed
    workers = {o.worker for o in report.outcomes}
    # workers pull from one shared queue once their model is built: with three small slides the
    # first one ready may take them all, so "both took a slide" is a race, not a rule
    assert 1 <= len(workers) <= 2 and all(w.endswith("/cpu") for w in workers)
    assert all(w.split(":")[1].split("/")[0] != str(os.getpid()) for w in workers)  # children
    assert _outputs(tmp_path) == _outputs(serial)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _kill_first_lock_holder(folder: Path, killed: list[int], stop: threading.Event) -> None:
    """Kill -9 the process holding the first slide lock that appears in `folder`."""
    while not stop.is_set():
        for lock in folder.glob("*.lock"):
            try:
                pid = json.loads(lock.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                continue
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.002)


def test_ray_with_a_killed_worker_equals_serial(ray_cluster, extractor, jobs, serial, tmp_path):
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_lock_holder, args=(tmp_path, killed, stop))
    killer.start()
    try:
        report = generate_bags(jobs, extractor, tmp_path, *GEOMETRY, progress=False, ray=True)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed"
    assert sorted(report.done) == sorted(j.name for j in jobs), report.failed
    assert _outputs(tmp_path) == _outputs(serial)
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name or p.suffix == ".lock"]
