"""Atomic outputs: write under a temporary name in the destination folder, then `os.replace`.

A crash (or a kill) leaves at worst a `*.tmp-*` file that no reader mistakes for a finished
output. Temporary names carry their owner (`<dest>.tmp-<pid>-<host hash>-<random>`), so a later
run can tell leftovers of dead processes from the files a live process is writing
(`slideflow.io.locks.clean_stale_temps`). Metadata files are written last by the callers.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def host_tag(host: str | None = None) -> str:
    """8 hex digits naming a host (hostnames may hold '-' and '.', which names need to avoid)."""
    return hashlib.sha1((host or socket.gethostname()).encode()).hexdigest()[:8]


def tmp_prefix(dest_name: str) -> str:
    """Prefix of the temporary names of `dest_name`: `<dest_name>.tmp-<pid>-<host>-`.

    Every temporary output uses it (mkstemp/mkdtemp add a random suffix) so that stale-file
    cleanup can check whether the owner is still alive.
    """
    return f"{dest_name}{TMP_MARK}{os.getpid()}-{host_tag()}-"


def umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def tmp_path_for(dest: str | os.PathLike) -> Path:
    """A unique temporary path beside `dest` (same filesystem, so `os.replace` is atomic).

    mkstemp creates files 0600; outputs get the usual 0666 & ~umask so that collaborators on a
    shared cluster can read them.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=tmp_prefix(dest.name), dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    except BaseException:
        os.close(fd)
        discard(name)
        raise
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto `dest`, on error remove it."""
    tmp = tmp_path_for(dest)
    try:
        yield tmp
        if tmp.is_dir() or tmp.exists():
            os.replace(tmp, dest)
    except BaseException:
        discard(tmp)
        raise


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file for writing; it becomes `dest` only if the block completes."""
    with atomic_path(dest) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def stage(dest: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """A complete, fsynced temporary file beside `dest`, NOT moved into place.

    For outputs made of several files (data + index): stage every file first, then `os.replace`
    them in order, so that a full disk fails before anything finished is touched. On error the
    temporary file is removed.
    """
    tmp = tmp_path_for(dest)
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        discard(tmp)
        raise
    return tmp


class AtomicWriter:
    """Context-manager protocol of our streaming writers (TFRecords, bags).

    Subclasses implement `close()` (commit: move into place, metadata last), `abort()` (discard
    the temporary output) and the `finished` property. An exception inside the `with` block, or a
    writer dropped without being closed, aborts: nothing half-written ever looks finished.
    """

    @property
    def finished(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "finished", True):  # partially built objects count as finished
            self.abort()


def close_quietly(fh: Any) -> None:
    """Close a file whose contents are being discarded. Closing flushes the buffer, and on a
    full disk that flush fails again; the error must not stop the temporary file's removal."""
    if fh is not None:
        with contextlib.suppress(OSError, ValueError):
            fh.close()


def discard(path: str | os.PathLike | None) -> None:
    """Remove a temporary output (file or folder); a missing one is fine."""
    if path is None:
        return
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


#: errno values of a full disk or an exhausted quota
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: how `disk_full_text` begins (a scheduler tells a full disk from other failures by it)
DISK_FULL_TEXT = "disk full writing to"


def disk_full_error(exc: BaseException | None) -> OSError | None:
    """The full-disk (or quota) OSError behind `exc`, if any: libraries that write through a
    file object (torch.save) raise their own error from it."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def disk_full_text(exc: BaseException, where: Any) -> str | None:
    """'disk full writing to <where> (...); ... free space and rerun' when `exc` comes from a
    full disk (the writers have removed the slide's temporary files by then), else None."""
    full = disk_full_error(exc)
    if full is None:
        return None
    return (f"{DISK_FULL_TEXT} {where} ({full.strerror or full}); nothing of this slide "
            "was kept: free space and rerun")


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (indent 2, keys sorted for byte-identical reruns)."""
    with atomic_open(dest, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def is_temporary(path: str | os.PathLike) -> bool:
    """True for leftovers of an interrupted atomic write."""
    return TMP_MARK in Path(path).name
