"""Per-slide lock files and cleanup of temporary files of dead runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from slideflow.io.atomic import TMP_MARK, host_tag, tmp_path_for, tmp_prefix
from slideflow.io.locks import SlideLock, clean_stale_temps, pid_alive, temp_owner


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_lock(folder: Path, name: str, **info) -> Path:
    path = folder / f"{name}.lock"
    path.write_text(json.dumps({"host": os.uname().nodename, "token": "old", **info}))
    return path


def test_lock_is_exclusive_and_released(tmp_path):
    a, b = SlideLock(tmp_path, "s1"), SlideLock(tmp_path, "s1")
    assert a.acquire() and not b.acquire()
    info = json.loads((tmp_path / "s1.lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == os.uname().nodename
    assert "started" in info and str(os.getpid()) in a.holder()
    a.release()
    assert not (tmp_path / "s1.lock").exists()
    with b:
        assert b.acquired
    assert not (tmp_path / "s1.lock").exists()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    _fake_lock(tmp_path, "s1", pid=_dead_pid(), started=time.time())
    lock = SlideLock(tmp_path, "s1")
    assert lock.acquire()
    assert json.loads((tmp_path / "s1.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no takeover mutex, no grave


def test_live_lock_is_never_taken_whatever_its_age(tmp_path):
    # a live process of our own, not os.getppid(): a reparented pytest's parent is pid 1,
    # which never holds our locks
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        path = _fake_lock(tmp_path, "s1", pid=live.pid, started=0)
        old = time.time() - 10 * 86400
        os.utime(path, (old, old))
        assert not SlideLock(tmp_path, "s1", timeout=1).acquire()
        assert path.exists()
    finally:
        live.kill()
        live.wait()


def test_reused_pid_does_not_keep_a_lock(tmp_path):
    _fake_lock(tmp_path, "s1", pid=os.getppid(), pid_start="1")  # same pid, other process
    assert SlideLock(tmp_path, "s1").acquire()


def test_other_host_lock_is_stale_only_after_the_timeout(tmp_path):
    path = tmp_path / "s1.lock"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x"}))
    assert not SlideLock(tmp_path, "s1", timeout=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    assert SlideLock(tmp_path, "s1", timeout=60).acquire()


def test_heartbeat_keeps_a_long_held_lock_fresh(tmp_path):
    lock = SlideLock(tmp_path, "s1", timeout=0.4)
    assert lock.acquire()
    old = time.time() - 100
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - lock.path.stat().st_mtime < 1
    lock.release()


RACE = """
import sys, time
from slideflow.io.locks import SlideLock
lock = SlideLock(sys.argv[1], "s1")
while time.time() < float(sys.argv[2]):
    pass
print(int(lock.acquire()), flush=True)
time.sleep(1.0)
lock.release()
"""


def test_stale_takeover_race_has_one_winner(tmp_path):
    """Six processes find the same stale lock at the same instant: exactly one takes it."""
    _fake_lock(tmp_path, "s1", pid=_dead_pid())
    start = time.time() + 2.0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(start)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(6)]
    wins = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert sum(wins) == 1, wins
    assert not (tmp_path / "s1.lock").exists()


def test_temp_names_carry_their_owner(tmp_path):
    tmp = tmp_path_for(tmp_path / "s1.pt")
    assert tmp.name.startswith(tmp_prefix("s1.pt")) and TMP_MARK in tmp.name
    assert temp_owner(tmp)[0] == os.getpid()
    assert pid_alive(os.getpid()) and not pid_alive(_dead_pid())


def test_clean_stale_temps_spares_live_processes(tmp_path):
    mine = tmp_path_for(tmp_path / "s1.pt")  # this (live) process
    dead_pid = _dead_pid()
    dead = tmp_path / tmp_prefix("s1.pt").replace(f"{TMP_MARK}{os.getpid()}-",
                                                  f"{TMP_MARK}{dead_pid}-")
    dead = Path(str(dead) + "abc")
    dead.write_bytes(b"partial")
    dead_dir = tmp_path / (tmp_prefix("s1.zarr").replace(f"-{os.getpid()}-",
                                                          f"-{dead_pid}-") + "xyz")
    dead_dir.mkdir()
    (dead_dir / "chunk").write_bytes(b"x")
    other_host_recent = tmp_path / f"s1.h5{TMP_MARK}123-deadbeef-abc"
    other_host_recent.write_bytes(b"x")
    other_host_old = tmp_path / f"s1.index.npz{TMP_MARK}123-deadbeef-abc"
    other_host_old.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(other_host_old, (old, old))
    other_slide = tmp_path / f"s2.pt{TMP_MARK}{dead_pid}-x"  # not asked for
    other_slide.write_bytes(b"x")
    removed = clean_stale_temps(tmp_path, "s1", timeout=3600)
    assert sorted(p.name for p in removed) == sorted([dead.name, dead_dir.name,
                                                      other_host_old.name])
    assert mine.exists() and other_host_recent.exists() and other_slide.exists()


def test_extract_tiles_skips_a_held_slide_and_cleans_dead_temps(tmp_path, slides):
    from slideflow.extract import extract_slide

    from conftest import CMU

    out = tmp_path / "tfr"
    with SlideLock(out, "CMU-1-Small-Region"):
        r = extract_slide(CMU, out, 112, 224)
    assert r.status == "busy" and r.reason.startswith("locked by")
    assert not (out / "CMU-1-Small-Region.tfrecords").exists()
    dead = out / f"CMU-1-Small-Region.tfrecords{TMP_MARK}{_dead_pid()}-{host_tag()}-x"
    dead.write_bytes(b"half a record")
    live = Path(str(tmp_path_for(out / "CMU-1-Small-Region.tfrecords")))  # ours: kept
    r = extract_slide(CMU, out, 112, 224)
    assert r.status == "done" and r.tiles == 24
    assert not dead.exists() and live.exists()
    assert not list(out.glob("*.lock"))


def test_dead_takeover_mutex_is_cleared_and_the_lock_taken_in_one_call(tmp_path):
    """A process killed inside the takeover (its mutex and its stale lock left behind): the
    next run takes the slide at once, instead of skipping it for this run (kill -9 loop)."""
    dead = _dead_pid()
    _fake_lock(tmp_path, "s1", pid=dead)
    mutex = tmp_path / "s1.lock.takeover"
    mutex.write_text(json.dumps({"host": os.uname().nodename, "pid": dead, "token": "m"}))
    lock = SlideLock(tmp_path, "s1")
    assert lock.acquire() and lock.took_over
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_live_takeover_mutex_is_left_alone(tmp_path):
    _fake_lock(tmp_path, "s1", pid=_dead_pid())
    mutex = tmp_path / "s1.lock.takeover"
    mutex.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "token": "m"}))
    assert not SlideLock(tmp_path, "s1").acquire()  # another (live) process is taking over
    assert json.loads(mutex.read_text())["token"] == "m"


def test_lock_files_are_never_empty_and_leave_no_temporaries(tmp_path, monkeypatch):
    """Locks appear with their owner already written (temporary file + hard link), readable
    by other users; without hard links the O_EXCL fallback gives the same result."""
    lock = SlideLock(tmp_path, "s1")
    assert lock.acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert lock.path.stat().st_mode & 0o044 == 0o044 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.lock"]
    lock.release()

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    a, b = SlideLock(tmp_path, "s2"), SlideLock(tmp_path, "s2")
    assert a.acquire() and not b.acquire()
    assert json.loads(a.path.read_text())["token"] == a.info["token"]
    a.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _umask() -> int:
    from slideflow.io.atomic import umask

    return umask()


def test_leftovers_of_a_takeover_killed_after_the_rename_are_swept(tmp_path):
    """Killed after moving the stale lock away but before removing its mutex and the renamed
    lock: the next process creates the lock directly and removes both leftovers (kill -9
    loop: 'kill-b.lock.takeover' was left behind)."""
    dead = _dead_pid()
    mutex = tmp_path / "s1.lock.takeover"
    mutex.write_text(json.dumps({"host": os.uname().nodename, "pid": dead, "token": "m"}))
    (tmp_path / "s1.lock.stale-0a1b2c3d").write_text("{}")
    (tmp_path / "s1.lock.takeover.stale-0a1b2c3d").write_text("{}")
    (tmp_path / "s10.lock.stale-0a1b2c3d").write_text("{}")  # another slide's: untouched
    lock = SlideLock(tmp_path, "s1")
    assert lock.acquire()
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s10.lock.stale-0a1b2c3d"]
    live = {"host": os.uname().nodename, "pid": os.getpid(), "token": "m"}
    mutex.write_text(json.dumps(live))  # a live process's takeover in progress: kept
    assert SlideLock(tmp_path, "s1").acquire()
    assert mutex.exists()
