"""The CLI's per-slide locks and owner-tagged temporary files under hostile leftovers: what a
live process holds is never removed (whatever its age); what a dead process left is taken over
or removed, and the run's summary says so."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slideflow as sf
from slideflow.cli import app
from slideflow.io.atomic import host_tag
from slideflow.io.locks import _proc_start

from .cases import hostile
from .tiny import NAME, tiny_extractor
from conftest import CMU

A, B = "slide-a", "slide-b"
runner = CliRunner()


@pytest.fixture()
def sleeper():
    """A live process of ours (killed at the end, or by the test to make it 'dead')."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def _plant(folder: Path, name: str, pid: int, data_suffix: str) -> tuple[Path, Path]:
    """A lock and a temporary file owned by `pid`, both ten days old."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / f"{name}.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                "pid_start": _proc_start(pid), "started": time.time() - 864000,
                                "token": "planted"}))
    tmp = folder / f"{name}{data_suffix}.tmp-{pid}-{host_tag()}-planted"
    tmp.write_bytes(b"half written")
    old = time.time() - 864000
    for p in (lock, tmp):
        os.utime(p, (old, old))
    return lock, tmp


def _state(*paths: Path) -> list[tuple[bytes, int]]:
    return [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths]


@hostile("cli-live-lock-and-temp", "features run while a live process (10 days old) holds "
         "slide-a's lock and a temporary bag file",
         "slide-a skipped as 'held by other processes' (exit 0, the other slide done); the "
         "lock and the temporary file are left byte for byte, mtime too")
@hostile("cli-dead-lock-and-temp", "the same lock and temporary file after their process died",
         "lock taken over and temp removed; the slide is done; the summary prints 'recovered "
         "slide-a: took over the stale lock of <host> pid N ... (dead)' and 'removed ...', "
         "summary.json lists both under notes; no lock or temp left")
def test_features_cli_respects_live_locks_and_recovers_dead_ones(tmp_path, slides, sleeper):
    tiny_extractor(tmp_path / "tiny")  # registered in this process
    src = tmp_path / "slides"
    src.mkdir()
    for n in (A, B):
        (src / f"{n}.svs").symlink_to(CMU)
    out = tmp_path / "bags"
    lock, tmp = _plant(out, A, sleeper.pid, ".pt")
    before = _state(lock, tmp)
    args = ["features", str(src), "-o", str(out), "-e", NAME, "--weights",
            str(tmp_path / "tiny" / "hostile_tiny.pth"), "--tile-px", "112", "--tile-um", "224",
            "--qc", "none"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 done, 0 reused, 1 held by other processes, 0 failed" in res.output
    assert _state(lock, tmp) == before  # a live process's files are never touched
    assert not (out / f"{A}.pt").exists() and (out / f"{B}.pt").exists()

    sleeper.kill()
    sleeper.wait()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith("1 done, 1 reused, 0 failed")
    took = f"recovered {A}: took over the stale lock of {socket.gethostname()} pid {sleeper.pid}"
    assert any(line.startswith(took) and line.endswith(f"(dead) in {out}") for line in lines)
    assert f"recovered {A}: removed {tmp.name} left by a dead run" in lines
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert len(notes) == 2 and all(n.startswith(f"{A}: ") for n in notes)
    assert not lock.exists() and not tmp.exists() and (out / f"{A}.pt").exists()
    assert not list(out.glob("*.lock*")) and not list(out.glob("*.tmp-*"))
    assert sf.io.read_bag(out / f"{A}.pt").features.shape == (24, 4)


@hostile("extract-live-then-dead-lock", "extract-tiles while a live process holds a slide's "
         "lock and temporary TFRecord; again after it died",
         "live: slide skipped, counted '1 held by other processes' (was counted as reused), lock and temp untouched; dead: lock "
         "taken over, temp removed, 24 tiles extracted, 'recovered ...' printed; nothing left")
def test_extract_tiles_cli_respects_live_locks_and_recovers_dead_ones(tmp_path, slides,
                                                                      sleeper):
    src = tmp_path / "slides"
    src.mkdir()
    (src / f"{A}.svs").symlink_to(CMU)
    P = sf.create_project(tmp_path / "p", slides=src)
    args = ["extract-tiles", str(P.root), "--tile-px", "112", "--tile-um", "224", "--qc",
            "none"]
    tfr = P.root / "tfrecords" / "MyProject" / "112px_224um"
    lock, tmp = _plant(tfr, A, sleeper.pid, ".tfrecords")
    before = _state(lock, tmp)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "0 extracted, 0 reused, 1 held by other processes, 0 failed" in res.output
    assert _state(lock, tmp) == before and not (tfr / f"{A}.tfrecords").exists()

    sleeper.kill()
    sleeper.wait()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"recovered {A}: took over the stale lock of" in res.output
    assert f"recovered {A}: removed {tmp.name} left by a dead run" in res.output
    assert "1 extracted, 0 reused, 0 failed; 24 tiles" in res.output
    assert sorted(p.name for p in tfr.iterdir()) == [
        "extraction_report.html", "failures.csv", f"{A}.extract.json", f"{A}.index.npz",
        f"{A}.tfrecords", "summary.json"]
    assert len(json.loads((tfr / "summary.json").read_text())["notes"]) == 2
