"""One bad slide, lock file or signal never loses the batch: whatever a slide raises becomes
its own failure (type and message in failures.csv), the other slides run, summary.json and
failures.csv are written, and a requeued job finds no lock of a process that was told to stop."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slideflow.cli import app
from slideflow.errors import BagsConfigMismatchError
from slideflow.io.locks import SlideLock

from .cases import hostile, hostile_params
from .tiny import NAME, tiny_extractor
from conftest import CMU

runner = CliRunner()
GEOMETRY = ["--tile-px", "112", "--tile-um", "224", "--qc", "none"]


def _tiny_args(tmp_path: Path) -> list[str]:
    """The tiny extractor, registered in this process once (`--feature-plugin` would register
    it again)."""
    tiny_extractor(tmp_path / "tiny")
    return ["-e", NAME, "--weights", str(tmp_path / "tiny" / "hostile_tiny.pth")]


def _features(tmp_path: Path, *inputs: Path, extra: list[str] | None = None):
    out = tmp_path / "bags"
    args = ["features", *map(str, inputs), "-o", str(out), *_tiny_args(tmp_path), *GEOMETRY,
            *(extra or [])]
    return runner.invoke(app, args), out


def _failures(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "failures.csv", newline="") as fh:
        return {r["slide"]: (r["error_type"], r["message"]) for r in csv.DictReader(fh)}


def _good(tmp_path: Path) -> Path:
    good = tmp_path / "in" / "good.svs"
    good.parent.mkdir(exist_ok=True)
    good.symlink_to(CMU)
    return good


@hostile("aperio-mpp-1e-300", "an Aperio slide whose ImageDescription says MPP = 1e-300, in a "
         "batch with a good slide", "that slide fails 'records 1e-300 microns per pixel ... "
         "pass the real value' (was OverflowError ending the batch); the other is done; "
         "failures.csv and summary.json written")
def test_absurd_file_mpp_fails_one_slide(tmp_path):
    bad = tmp_path / "in" / "bad.svs"
    bad.parent.mkdir()
    bad.write_bytes(CMU.read_bytes().replace(b"MPP = 0.4990", b"MPP = 1e-300"))
    res, out = _features(tmp_path, bad, _good(tmp_path))
    assert res.exit_code == 1, res.output
    kind, msg = _failures(out)["bad"]
    assert kind == "MissingMPPError" and "1e-300 microns per pixel" in msg and "bad.svs" in msg
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["failed_slides"]) == (1, 1, ["bad"])


@hostile("unexpected-exception-one-slide", "a slide whose processing raises an exception type "
         "nobody expected (KeyError, ZeroDivisionError)", "that slide fails with its type and "
         "message in failures.csv; the batch goes on (only four types were caught)")
def test_any_exception_is_one_slides_failure(tmp_path, monkeypatch):
    from slideflow import bag_runner

    real = bag_runner._job_source

    def flaky(job, *args, **kwargs):
        if job.name == "bad":
            raise ZeroDivisionError("integer division or modulo by zero")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(bag_runner, "_job_source", flaky)
    bad = tmp_path / "in" / "bad.svs"
    bad.parent.mkdir()
    bad.symlink_to(CMU)
    res, out = _features(tmp_path, bad, _good(tmp_path))
    assert res.exit_code == 1 and (out / "failures.csv").exists(), res.output
    assert _failures(out) == {"bad": ("ZeroDivisionError", "integer division or modulo by zero")}
    assert (out / "good.pt").exists() and not (out / "bad.pt").exists()
    assert not list(out.glob("*.lock")) and not list(out.glob("*.tmp-*"))


INTERRUPTS = hostile_params([
    ("interrupted-run-summary", "Ctrl-C during the second slide of a features run",
     "exit 130; summary.json (interrupted: KeyboardInterrupt, the first slide done) and "
     "failures.csv are written; no lock or temporary file left", (KeyboardInterrupt, 130)),
    ("sigterm-run-summary", "SIGTERM during the second slide (the handler's SystemExit(143))",
     "exit 143; summary.json (interrupted: SystemExit) and failures.csv written; no lock left",
     (SystemExit(143), 143)),
    ("folder-claimed-run-summary", "the output folder claimed by a run with other settings "
     "while the second slide is processed", "exit 2 'error: ...'; summary.json (interrupted: "
     "BagsConfigMismatchError, the first slide done) and failures.csv still written",
     (BagsConfigMismatchError("bags: claimed by another run"), 2)),
])


@pytest.mark.parametrize("interrupt_with", INTERRUPTS)
def test_interrupted_run_still_writes_its_summary(interrupt_with, tmp_path, monkeypatch):
    from slideflow import bag_runner

    real = bag_runner._job_source
    exc_in, code = interrupt_with

    def interrupt(job, *args, **kwargs):
        if job.name == "z-last":
            raise exc_in
        return real(job, *args, **kwargs)

    monkeypatch.setattr(bag_runner, "_job_source", interrupt)
    last = tmp_path / "in" / "z-last.svs"
    good = _good(tmp_path)
    last.symlink_to(CMU)
    out = tmp_path / "bags"
    monkeypatch.setattr(sys, "argv", ["slideflow", "features", str(good), str(last), "-o",
                                      str(out), *_tiny_args(tmp_path), *GEOMETRY])
    from slideflow.cli import main

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == code
    summary = json.loads((out / "summary.json").read_text())
    want = type(exc_in).__name__ if isinstance(exc_in, BaseException) else exc_in.__name__
    assert summary["interrupted"] == want
    assert summary["done"] == 1
    assert _failures(out) == {}
    assert not list(out.glob("*.lock")) and not list(out.glob("*.tmp-*"))


LOCKS = hostile_params([
    ("lock-holds-list", "a lock file holding `[]`", "stale with a warning naming the file "
     "(was AttributeError ending the batch)", "[]"),
    ("lock-holds-string", "a lock file holding `\"x\"`", "stale with a warning", '"x"'),
    ("lock-pid-1e29", "a lock of this host naming pid 1e29 (int and float)",
     "judged by its heartbeat's age, taken over when old (was OverflowError)",
     '{"host": "%s", "pid": 100000000000000000000000000000, "started": 1e300}'),
    ("lock-pid-1", "a lock of this host naming pid 1 without a start time",
     "judged by its heartbeat's age, not held forever by init", '{"host": "%s", "pid": 1}'),
])


@pytest.mark.parametrize("content", LOCKS)
def test_unusable_lock_files(content, tmp_path, caplog):
    out = tmp_path / "bags"
    out.mkdir()
    lock = out / "good.lock"
    lock.write_text(content.replace("%s", socket.gethostname()))
    fresh = SlideLock(out, "good", timeout=60)
    if content.startswith("{"):  # a parsed record: held while its heartbeat is fresh
        assert not fresh.acquire()
        assert "pid" in fresh.holder()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    res, out = _features(tmp_path, _good(tmp_path))
    assert res.exit_code == 0, res.output
    assert (out / "good.pt").exists() and not lock.exists()
    if not content.startswith("{"):
        assert "good.lock does not hold a lock record" in caplog.text


SCRIPT = """
import sys, time
from slideflow.io.locks import SlideLock
lock = SlideLock(sys.argv[1], "A")
assert lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


@hostile("sigterm-releases-locks", "SIGTERM (what SLURM sends before a requeue) to a process "
         "holding a slide lock", "the lock is removed at once and the process exits 143 (was: "
         "the requeued job skipped the slide as locked and exited 0 without its bag)")
def test_sigterm_releases_held_locks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                         env=env, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert (tmp_path / "A.lock").exists()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        p.kill()
    assert not (tmp_path / "A.lock").exists()
    with SlideLock(tmp_path, "A") as again:  # the requeued task gets it at once
        assert again.acquired and again.took_over is None
