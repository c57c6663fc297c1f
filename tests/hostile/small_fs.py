"""A real, size-limited file system for disk-full tests: a 1 MiB tmpfs mounted by the test.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted (CI runners, containers) the
tests skip and say why, and `test_disk_full_logic.py` covers the same error paths by injecting
ENOSPC. `fill(fs, free)` leaves about `free` bytes free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "1m"


def _mount(target: Path) -> str | None:
    """Mount a tmpfs at `target`; None on success, else why not."""
    if os.name != "posix" or shutil.which("mount") is None:
        return "no mount command"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not root (mounting a tmpfs needs CAP_SYS_ADMIN)"
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs",
                          str(target)], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return f"mount -t tmpfs refused: {res.stderr.strip() or res.returncode}"
    return None


@contextlib.contextmanager
def small_fs(where: Path) -> Iterator[Path]:
    """A mounted 1 MiB tmpfs at `where` (skips the test when mounting is not permitted)."""
    where.mkdir(parents=True, exist_ok=True)
    why = _mount(where)
    if why is not None:
        pytest.skip(f"disk-full test needs a size-limited file system: {why}")
    try:
        yield where
    finally:
        res = subprocess.run(["umount", str(where)], capture_output=True, timeout=30)
        if res.returncode != 0:  # still busy (a child holding a file): detach it
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def free_bytes(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def fill(fs: Path, free: int) -> Path:
    """A filler file leaving about `free` bytes free on `fs`; delete it to give space back."""
    filler = fs / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free_bytes(fs) - free))
    return filler
