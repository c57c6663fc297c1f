"""The TFRecord sink of the engine: encode tiles in a thread pool, write them in source order.

`TFRecordSink(...)` is called with `(uint8 tiles (B, H, W, 3), top-left coords (B, 2))` batches
by `slideflow.pipeline.run`, or with already-encoded passthrough batches (stored JPEG streams,
written as they are; see `slideflow.slide.passthrough`). Each batch is split into chunks encoded in a shared pool (simplejpeg
and OpenCV release the GIL); up to two batches are in the pool while the next one is read, and
records are written in the order the batches arrived, so the bytes do not depend on thread
timing. `loc_x`/`loc_y` are tile CENTRES in level-0 px (top-left + full_extract_px // 2), as in
Slideflow; loose tiles (`save_tiles`) are named `<slide>-<loc_x>-<loc_y>.<fmt>` with the same
centres, as Slideflow 3 does.

Shuffled extraction stages the encoded tiles in a temporary file in read order and writes the
records permuted at the end. Everything goes to temporary names (TFRecordWriter renames when
complete); the caller moves the loose-tile folder into place after the TFRecord.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..io import imgcodec
from ..io.atomic import close_quietly, discard, tmp_prefix
from ..io.tfrecord import TFRecordWriter

#: batches whose encoding may be in flight before the oldest one is written
IN_FLIGHT = 2


class Stopped(Exception):
    """Raised inside a slide worker when the run is being cancelled."""


def _encode_chunk(tiles: np.ndarray, fmt: str, quality: int) -> tuple[list[bytes], float]:
    t0 = time.perf_counter()
    out = [imgcodec.encode(t, fmt, quality) for t in tiles]
    return out, time.perf_counter() - t0


def _merge_encoded(batch: Any, fmt: str, quality: int) -> tuple[list[bytes], float]:
    """Passthrough batch (`slideflow.slide.passthrough.EncodedTiles`): stored streams as they
    are, the remaining tiles encoded."""
    t0 = time.perf_counter()
    redo = iter([imgcodec.encode(t, fmt, quality) for t in batch.pixels]
                if batch.pixels is not None else [])
    out = [s if s is not None else next(redo) for s in batch.streams]
    return out, time.perf_counter() - t0


class TFRecordSink:
    """Sink writing `<outdir>/<name>.tfrecords` (+ index) and optionally loose tiles.

    Use as a context manager around the engine run; on a clean exit the TFRecord is in place
    and `loose` names the temporary folder of loose tiles (or None).
    """

    def __init__(self, tfrecord: Path, name: str, half_extent: int, fmt: str, quality: int, *,
                 pool: ThreadPoolExecutor, chunks: int, order: np.ndarray | None = None,
                 tiles_dir: Path | None = None, progress: Any = None,
                 stop: threading.Event | None = None):
        self.tfrecord, self.name, self.half = Path(tfrecord), name, int(half_extent)
        self.fmt, self.quality = fmt, int(quality)
        self.pool, self.chunks = pool, max(1, int(chunks))
        self.order, self.progress, self.stop = order, progress, stop
        self.timings = {"encode": 0.0, "write": 0.0}
        self.n = 0
        self.loose: Path | None = None
        if tiles_dir is not None:
            tiles_dir.mkdir(parents=True, exist_ok=True)
            self.loose = Path(tempfile.mkdtemp(prefix=tmp_prefix(name), dir=tiles_dir))
        self._staged: tuple[Any, Path, list[tuple[int, int, int, int]]] | None = None
        self._pending: deque[tuple[np.ndarray, list[Future]]] = deque()
        self._writer = TFRecordWriter(self.tfrecord)

    def __enter__(self) -> TFRecordSink:
        self._writer.__enter__()
        if self.order is not None:  # shuffled: stage encoded tiles in read order
            fd, staged = tempfile.mkstemp(prefix=tmp_prefix(f"{self.name}.unordered"),
                                          dir=self.tfrecord.parent)
            self._staged = (os.fdopen(fd, "w+b"), Path(staged), [])
        return self

    def __call__(self, tiles: np.ndarray, coords: np.ndarray) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped(self.name)
        if hasattr(tiles, "streams"):  # stored JPEG streams (passthrough): nothing to split
            fut: Future = Future()
            fut.set_result(_merge_encoded(tiles, self.fmt, self.quality))
            self._pending.append((coords + self.half, [fut]))
            if len(self._pending) > IN_FLIGHT:
                self._flush(self._pending.popleft())
            return
        step = -(-len(tiles) // self.chunks)
        futs = [self.pool.submit(_encode_chunk, tiles[a:a + step], self.fmt, self.quality)
                for a in range(0, len(tiles), step)]
        self._pending.append((coords + self.half, futs))
        if len(self._pending) > IN_FLIGHT:
            self._flush(self._pending.popleft())

    def _flush(self, item: tuple[np.ndarray, list[Future]]) -> None:
        centres, futs = item
        encoded: list[bytes] = []
        for f in futs:
            data, secs = f.result()
            encoded.extend(data)
            self.timings["encode"] += secs
        t = time.perf_counter()
        for data, (cx, cy) in zip(encoded, centres.tolist()):
            if self._staged is not None:
                fh, _, index = self._staged
                index.append((fh.tell(), len(data), cx, cy))
                fh.write(data)
            else:
                self._writer.write(data, self.name, cx, cy)
            if self.loose is not None:
                (self.loose / f"{self.name}-{cx}-{cy}.{self.fmt}").write_bytes(data)
        self.n += len(encoded)
        self.timings["write"] += time.perf_counter() - t
        if self.progress is not None:
            self.progress.advance_tiles(len(encoded))

    def _finish(self) -> None:
        while self._pending:
            self._flush(self._pending.popleft())
        if self._staged is not None:
            t = time.perf_counter()
            fh, _, index = self._staged
            fh.flush()
            for k in self.order:
                off, length, cx, cy = index[k]
                self._writer.write(os.pread(fh.fileno(), length, off), self.name, cx, cy)
            self.timings["write"] += time.perf_counter() - t

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                try:
                    self._cleanup(failed=True)
                finally:
                    self._writer.__exit__(type(err), err, err.__traceback__)
                raise
        try:
            self._cleanup(failed=exc_type is not None)
        finally:  # the TFRecord is committed (or its temporary file removed) in any case
            self._writer.__exit__(exc_type, exc, tb)

    def _cleanup(self, failed: bool) -> None:
        """Release the staging file and, on failure, the loose tiles. Never raises for a full
        disk: closing a file with unflushed bytes fails again there."""
        for _, futs in self._pending:
            for f in futs:
                f.cancel()
        self._pending.clear()
        if self._staged is not None:
            close_quietly(self._staged[0])
            discard(self._staged[1])
            self._staged = None
        if failed and self.loose is not None:
            discard(self.loose)
