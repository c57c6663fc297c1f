"""Per-output lock files, so that many processes (a SLURM array, several GPUs, Ray workers,
three shells started at once) can share one input list and one output folder and still do
every slide exactly once.

    with SlideLock(outdir, "slide-1") as lock:
        if not lock.acquired:      # a live process is working on it: skip, do not fail
            ...
        clean_stale_temps(outdir, "slide-1")   # leftovers of dead runs only
        ... write the outputs atomically ...

A lock is `<outdir>/<name>.lock`, created with O_CREAT | O_EXCL (atomic on local filesystems
and on NFSv3+), holding JSON: host, pid, the pid's start time (so a reused pid is not taken for
the old owner), the wall-clock start and a random token. While held, a heartbeat thread touches
the file every `stale_after / 4` seconds.

A lock is stale when its owner is a dead process on this host, or (any host) when its
heartbeat is older than `stale_after` (default 10 min; `SLIDEFLOW_LOCK_TIMEOUT` seconds). A
live process on this host never loses its lock, whatever its age. Taking over is serialised by
a second O_EXCL file, `<name>.lock.takeover`: only its holder may remove a stale lock, and it
re-reads the lock under that mutex and removes it only if it is still the same stale lock
(same token), by renaming it to a unique name first. So two processes that both find a stale
lock never both take it, and a fresh lock created meanwhile is never removed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

from .atomic import tmp_prefix
from .held_locks import held, released
from .lock_records import (  # noqa: F401 - the staleness names are part of this module's API
    UNPARSEABLE_GRACE_SECONDS,
    clean_stale_temps,
    default_timeout,
    describe,
    describe_record,
    file_age,
    is_stale,
    owner_record,
    pid_alive,
    proc_start,
    read_record,
    temp_is_stale,
    temp_owner,
)

_proc_start = proc_start  # the name tests and older callers import

log = logging.getLogger("slideflow")

LOCK_SUFFIX = ".lock"
TAKEOVER_SUFFIX = ".takeover"
#: a takeover mutex older than this belongs to a process that died inside the critical section
TAKEOVER_STALE_SECONDS = 30.0


def _create(path: Path, info: dict[str, Any]) -> bool:
    """Create `path` holding `info` if it does not exist; False if it does.

    The content is written to a temporary file first and hard-linked into place, so the file
    never exists empty: a process killed between creating and writing an O_EXCL file left an
    empty lock whose owner nobody could name, judged by age alone (minutes). A killed writer
    leaves only its temporary name, which `clean_stale_temps` removes. Filesystems without
    hard links fall back to O_EXCL + write.
    """
    tmp = path.with_name(tmp_prefix(path.name) + secrets.token_hex(4))
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # others read the owner
    try:
        try:
            _write_owner(fd, info)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.EMLINK):
                raise  # e.g. a full disk: reported, nothing half-made is left
            return _create_excl(path, info)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_owner(fd: int, info: dict[str, Any]) -> None:
    """Write `info` as JSON to `fd` (closed afterwards), flushed to disk."""
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _create_excl(path: Path, info: dict[str, Any]) -> bool:
    """O_EXCL create + write, for filesystems without hard links."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        _write_owner(fd, info)
    except BaseException:  # e.g. a full disk: an empty lock would block the slide for minutes
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return True



def _grave(path: Path) -> Path:
    """A unique name a stale lock or mutex is renamed to before it is removed."""
    return path.with_name(f"{path.name}.stale-{secrets.token_hex(4)}")


def _clear_dead_mutex(mutex: Path) -> bool:
    """Remove a takeover mutex whose owner died inside the critical section (or that is older
    than TAKEOVER_STALE_SECONDS). True when it is gone.

    It is moved to a unique name first and checked to be the one judged dead: two processes
    that both find a dead mutex must not remove each other's fresh one (that would let both
    into the critical section). A fresh mutex moved by mistake is linked back.
    """
    seen, age = read_record(mutex), file_age(mutex)
    if seen is None or age is None:
        return True
    if not (age > TAKEOVER_STALE_SECONDS or (seen and is_stale(seen, 0.0, float("inf")))):
        return False
    grave = _grave(mutex)
    try:
        os.rename(mutex, grave)
    except FileNotFoundError:
        return True
    try:
        if read_record(grave) != seen:  # replaced between the read and the rename: put it back
            with contextlib.suppress(OSError):
                os.link(grave, mutex)
            return False
        return True
    finally:
        grave.unlink(missing_ok=True)


class SlideLock:
    """An exclusive, crash-safe claim on one output name in one folder (see module doc).

    `acquire()` returns False (never blocks) when a live process holds it. Use as a context
    manager; `acquired` says whether this process holds it.
    """

    def __init__(self, folder: str | os.PathLike, name: str, *, timeout: float | None = None):
        self.path = Path(folder) / f"{name}{LOCK_SUFFIX}"
        self.timeout = default_timeout() if timeout is None else float(timeout)
        self.acquired = False
        self.info: dict[str, Any] | None = None
        #: 'host pid N since ...' of the stale lock this one replaced (None: none was stale)
        self.took_over: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> bool:
        if self.acquired:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = owner_record()
        for _ in range(3):
            if _create(self.path, info):
                self._held(info)
                self._sweep()
                return True
            if not self._take_over_stale():
                return False
        return False

    def _take_over_stale(self) -> bool:
        """Remove the current lock if it is stale (serialised, see module doc)."""
        seen, age = read_record(self.path), file_age(self.path)
        if seen is None or age is None:
            return True  # released meanwhile: try to create again
        if not is_stale(seen, age, self.timeout):
            return False
        if not seen:
            log.warning("%s does not hold a lock record (garbage or a foreign file); treated "
                        "as stale and replaced", self.path)
        mutex = self._mutex
        for _ in range(2):  # a dead process's mutex is cleared, then tried once more
            if _create(mutex, owner_record()):
                break
            if not _clear_dead_mutex(mutex):
                return False  # another process is taking over
        else:
            return False
        try:
            now = read_record(self.path)
            if now is None:
                return True
            if now.get("token") != seen.get("token") or not is_stale(
                    now, file_age(self.path) or 0.0, self.timeout):
                return False  # replaced by a fresh lock meanwhile
            grave = _grave(self.path)
            try:
                os.rename(self.path, grave)
            except FileNotFoundError:
                return True
            self.took_over = describe_record(now) + (
                " (dead)" if now.get("host") == socket.gethostname() else " (no heartbeat)")
            grave.unlink(missing_ok=True)
            return True
        finally:
            mutex.unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Remove what a process killed inside a takeover of this lock left: its mutex (when
        its owner is dead) and renamed stale locks. Holding the lock, nothing else can need
        them: a live takeover in progress keeps its mutex, and its own grave is optional.
        The folder is listed only when a mutex is there (one stat per lock otherwise: a
        listing per slide would grow with the folder)."""
        if self._mutex.exists() and _clear_dead_mutex(self._mutex):
            for grave in self.path.parent.glob(f"{glob.escape(self.path.name)}*.stale-*"):
                grave.unlink(missing_ok=True)

    @property
    def _mutex(self) -> Path:
        """The takeover mutex of this lock (see the module doc)."""
        return self.path.with_name(self.path.name + TAKEOVER_SUFFIX)

    def _held(self, info: dict[str, Any]) -> None:
        self.acquired, self.info = True, info
        held(self)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="sf-lock-heartbeat",
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        period = max(0.05, self.timeout / 4)
        while not self._stop.wait(period):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self, *, wait: bool = True) -> None:
        """Remove the lock if it is still ours (`wait=False`: do not wait for the heartbeat
        thread to stop, as in a signal handler)."""
        if not self.acquired:
            return
        self._stop.set()
        if wait and self._beat is not None:
            self._beat.join(timeout=5)
        now = read_record(self.path)
        if now is not None and self.info is not None and now.get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)
        self.acquired = False
        released(self)

    def holder(self) -> str:
        """Who holds the lock, for messages."""
        return describe(self.path)

    def __enter__(self) -> SlideLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


