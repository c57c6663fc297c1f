"""Lock-file records and staleness: who owns a lock or a temporary output, and whether that
owner is gone (a dead process on this host, or no heartbeat for longer than the timeout).

`slideflow.io.locks` creates, takes over and releases locks on top of these judgements; the same
rules decide which temporary outputs of killed runs `clean_stale_temps` may remove.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from .atomic import TMP_MARK, host_tag


def default_timeout() -> float:
    """Seconds without a heartbeat after which a lock of another host is stale."""
    try:
        return float(os.environ.get("SLIDEFLOW_LOCK_TIMEOUT", 600))
    except ValueError:
        return 600.0


def proc_start(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (Linux), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """True when `pid` runs on this host (and, if `start` is given, is the same process)."""
    if not valid_pid(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    if start is not None:
        now = proc_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused
    return True


def owner_record() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": proc_start(
        os.getpid()), "started": time.time(), "token": secrets.token_hex(8)}


def read_record(path: Path) -> dict[str, Any] | None:
    """The lock's owner record; {} for a file that does not hold a JSON object (being
    written on a filesystem without hard links, or garbage: see `is_stale`)."""
    try:
        info = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def valid_pid(pid: Any) -> bool:
    """A pid this host could run: a plain int in 1..2**22 (Linux's pid_max ceiling)."""
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= 1 << 22


def file_age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


#: seconds an unparseable lock file is left alone (a writer without hard links may be
#: between creating and writing it); older, it is stale
UNPARSEABLE_GRACE_SECONDS = 2.0


def is_stale(info: dict[str, Any], age: float, timeout: float) -> bool:
    """Whether a lock with contents `info` and heartbeat `age` (s) may be taken over.

    A lock that does not parse (`{}`) is stale after a short grace; one naming this host and
    a live pid is held, unless the pid was reused (start time differs) or is 1 with no start
    time recorded (init never holds our locks: a hand-made or foreign file); an impossible pid
    is judged by the heartbeat's age like a lock of another host.
    """
    if not info:
        return age > UNPARSEABLE_GRACE_SECONDS
    pid, start = info.get("pid"), info.get("pid_start")
    if info.get("host") == socket.gethostname() and valid_pid(pid) and (
            pid != 1 or isinstance(start, str)):
        return not pid_alive(pid, start if isinstance(start, str) else None)
    return age > timeout

def describe(path: str | os.PathLike) -> str:
    """'host pid N since HH:MM:SS' for a lock file (for messages)."""
    return describe_record(read_record(Path(path)) or {})


def describe_record(info: dict[str, Any]) -> str:
    if not info:
        return "an unreadable lock file"
    try:
        when = time.strftime("%H:%M:%S", time.localtime(float(info.get("started", 0))))
    except (TypeError, ValueError, OverflowError, OSError):
        when = "?"
    return f"{str(info.get('host', '?'))[:80]} pid {str(info.get('pid', '?'))[:24]} since {when}"

def temp_owner(path: str | os.PathLike) -> tuple[int, str] | None:
    """(pid, host tag) encoded in a temporary name by `tmp_prefix`, or None (older names)."""
    name = Path(path).name
    if TMP_MARK not in name:
        return None
    parts = name.rsplit(TMP_MARK, 1)[1].split("-")
    if len(parts) >= 3 and parts[0].isdigit() and len(parts[1]) == 8:
        return int(parts[0]), parts[1]
    return None


def temp_is_stale(path: str | os.PathLike, timeout: float | None = None) -> bool:
    """Whether a temporary output may be removed: its owner is a dead process on this host;
    for other hosts or unnamed owners, untouched for longer than `timeout`."""
    owner = temp_owner(path)
    if owner is not None and owner[1] == host_tag():
        return not pid_alive(owner[0])
    age = file_age(Path(path))
    return age is not None and age > (default_timeout() if timeout is None else timeout)


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None, *,
                      timeout: float | None = None) -> list[Path]:
    """Remove temporary outputs of dead runs in `folder` (those of `name` only, if given).

    A temporary file of a live process is never removed. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        n = p.name
        if TMP_MARK not in n or (name is not None and not n.startswith(name + ".")
                                 and not n.startswith(name + TMP_MARK)):
            continue
        if not temp_is_stale(p, timeout):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed
