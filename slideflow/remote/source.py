"""Byte sources: what the stored-tile reader reads compressed tiles from.

`read_spans([(start, end), ...])` returns the bytes of each span (a URL's: views into the
responses, the caller copies out what it keeps). A local file answers with one
`pread` per span. A URL merges spans closer than `MERGE_GAP` into one ranged GET (at most
`MAX_REQUEST` bytes each) and runs the GETs `SLIDEFLOW_REMOTE_CONCURRENCY` at a time (default
8), so a batch of tiles costs a few requests, not one per tile.

`RemoteSource.open()` gives a read-only, seekable file object over the same URL whose reads go
through a block cache (`BLOCK` bytes, LRU, `CACHE_BLOCKS` blocks): TIFF parsers (tifffile,
tiffslide) read the IFDs, tile offset arrays and JPEG tables from it with a few requests, and
the blocks stay cached for the run.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .fetch import FetchStats, RemoteObject, run_all

#: spans closer than this are fetched by one request (the gap's bytes are thrown away)
MERGE_GAP = 256 << 10
#: largest single ranged GET
MAX_REQUEST = 16 << 20
#: metadata block size and how many blocks the file object keeps
BLOCK = 256 << 10
CACHE_BLOCKS = 256


def merge_spans(spans: list[tuple[int, int]], gap: int = MERGE_GAP,
                limit: int = MAX_REQUEST) -> list[tuple[int, int]]:
    """Sorted, merged (start, end) ranges covering `spans`: neighbours closer than `gap` join
    while the range stays under `limit` bytes."""
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a - merged[-1][1] <= gap and max(b, merged[-1][1]) - merged[-1][0] <= limit:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


class LocalSource:
    """A local file read with pread (one call per span)."""

    remote = False

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = str(path)
        self._fd: int | None = None
        self.stats = FetchStats()

    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self._fd

    def read_spans(self, spans: list[tuple[int, int]]) -> list[bytes]:
        return [os.pread(self.fd(), b - a, a) for a, b in spans]

    def read(self, start: int, size: int) -> bytes:
        return self.read_spans([(start, start + size)])[0]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RemoteSource:
    """A URL read by merged, concurrent ranged GETs, counting requests and bytes."""

    remote = True

    def __init__(self, url: str, *, anon: bool | None = None, stats: FetchStats | None = None):
        self.obj = RemoteObject(url, anon=anon, stats=stats)
        self.name = self.obj.name
        self.stats = self.obj.stats
        self.concurrency = max(1, int(os.environ.get("SLIDEFLOW_REMOTE_CONCURRENCY", 8)))
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.obj.size

    def read_spans(self, spans: list[tuple[int, int]]) -> list[bytes | memoryview]:
        """Each span's bytes: views into the responses of the merged GETs, not copies (the
        caller copies out the pieces it keeps)."""
        ranges = merge_spans(spans)
        datas = run_all([lambda a=a, b=b: self.obj.get(a, b) for a, b in ranges],
                        self.concurrency)
        out: list[bytes | memoryview] = []
        for a, b in spans:  # each span lies inside one merged range
            i = _find(ranges, a)
            r0, data = ranges[i][0], datas[i]
            out.append(data if (a - r0, b - r0) == (0, len(data)) else
                       memoryview(data)[a - r0:b - r0])
        return out

    def read(self, start: int, size: int) -> bytes:
        """Bytes [start, start + size) through the block cache (metadata reads)."""
        end = min(start + size, self.size)
        if end <= start:
            return b""
        first, last = start // BLOCK, (end - 1) // BLOCK
        with self._lock:
            missing = [i for i in range(first, last + 1) if i not in self._blocks]
        if missing:
            runs = merge_spans([(i * BLOCK, min((i + 1) * BLOCK, self.size)) for i in missing],
                               gap=0)
            for (a, b), data in zip(runs, self.read_spans(runs)):
                with self._lock:
                    for i in range(a // BLOCK, -(-b // BLOCK)):
                        self._blocks[i] = bytes(data[i * BLOCK - a:(i + 1) * BLOCK - a])
        with self._lock:
            parts = []
            for i in range(first, last + 1):
                self._blocks.move_to_end(i)
                parts.append(self._blocks[i])
            while len(self._blocks) > CACHE_BLOCKS:
                self._blocks.popitem(last=False)
        data = b"".join(parts)
        return data[start - first * BLOCK:end - first * BLOCK]

    def open(self) -> BlockFile:
        """A new file object over this source (shared block cache, own position)."""
        return BlockFile(self)

    def close(self) -> None:
        with self._lock:
            self._blocks.clear()


def _find(ranges: list[tuple[int, int]], pos: int) -> int:
    import bisect

    return bisect.bisect_right([a for a, _ in ranges], pos) - 1


class BlockFile(io.RawIOBase):
    """Read-only seekable file object over a RemoteSource (for TIFF parsers)."""

    def __init__(self, source: RemoteSource):
        super().__init__()
        self.source = source
        self.pos = 0
        self.name = source.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")  # bytes, not items: tifffile passes numpy arrays
        data = self.source.read(self.pos, len(view))
        n = len(data)
        view[:n] = data
        self.pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.source.size - self.pos
        data = self.source.read(self.pos, size)
        self.pos += len(data)
        return data

    @property
    def size(self) -> int:
        return self.source.size


__all__ = ["BLOCK", "BlockFile", "LocalSource", "RemoteSource", "merge_spans"]
