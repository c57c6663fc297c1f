"""ENOSPC without a mount: files our writers open can be capped, so that a write that would make
one file larger than `limit` bytes fails with OSError(ENOSPC), as a full disk does.

`open` is replaced in the modules that create our output files (module globals shadow the
builtin), so CI covers every error path without root. `limit = None` gives the space back.
"""

from __future__ import annotations

import builtins
import errno
import os
from typing import Any

#: the modules whose `open` writes outputs: staged files, atomic_open, TFRecords
MODULES = ("slideflow.io.atomic", "slideflow.io.tfrecord_writer")


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Capped:
    """A writable file whose size may not pass the disk's limit."""

    def __init__(self, fh: Any, disk: FakeDisk):
        self._fh, self._disk, self._size = fh, disk, 0

    def write(self, data: Any) -> int:
        n = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        if self._disk.limit is not None and self._size + n > self._disk.limit:
            self._disk.refused += 1
            raise enospc()
        self._size += n
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _Capped:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()


class FakeDisk:
    def __init__(self, monkeypatch: Any, limit: int | None):
        import importlib

        self.limit, self.refused = limit, 0
        for name in MODULES:
            monkeypatch.setattr(importlib.import_module(name), "open", self.open, raising=False)

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = builtins.open(file, mode, *args, **kwargs)
        return _Capped(fh, self) if any(c in mode for c in "wax+") else fh
