"""Batched tile reading: one region read per run of neighbouring tiles, in a thread pool.

Tiles are planned as horizontal runs of kept tiles in the same grid row. Each run is read with a
single `read_region` call (decoding each JPEG tile of the slide once), sliced into tiles and
resized when the pyramid level is finer than the target. Runs are read by a small thread pool
with a bounded read-ahead window (openslide, tifffile and cv2 release the GIL), and tiles come
out in plan order, so results are deterministic whatever the thread timing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..validate import positive_int
from .backends.base import SlideReader
from .geometry import LevelChoice
from .stored_reader import usable_cores

#: at most this many tiles per region read (bounds a read to ~16 x 1 tiles)
MAX_RUN = 16


@dataclass(frozen=True)
class Run:
    """Indices [start, stop) of consecutive kept tiles read by one region read."""

    start: int
    stop: int


def plan_runs(coords: np.ndarray, stride: int, max_run: int = MAX_RUN) -> list[Run]:
    """Group row-major coords into runs of horizontally adjacent tiles (same y, step = stride)."""
    n = len(coords)
    if n == 0:
        return []
    xs, ys = coords[:, 0], coords[:, 1]
    breaks = np.ones(n, bool)
    breaks[1:] = (ys[1:] != ys[:-1]) | (xs[1:] - xs[:-1] != stride)
    starts = np.flatnonzero(breaks).tolist() + [n]
    runs = []
    for a, b in zip(starts[:-1], starts[1:]):
        for s in range(a, b, max_run):
            runs.append(Run(s, min(s + max_run, b)))
    return runs


def default_threads() -> int:
    """Reader threads: the usable cores (decode is the bottleneck and releases the GIL)."""
    return usable_cores()


class TileReader:
    """Reads the tiles at `coords` (level-0 top-left) from `reader` as uint8 RGB arrays."""

    def __init__(self, reader: SlideReader, coords: np.ndarray, extent: int, stride: int,
                 choice: LevelChoice):
        self.reader = reader
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.extent = extent
        self.stride = stride
        self.choice = choice

    def _level_offset(self, delta_l0: int) -> int:
        return int(round(delta_l0 / self.choice.downsample))

    def read_run(self, run: Run) -> np.ndarray:
        """(n, tile_px, tile_px, 3) uint8 for one run."""
        c = self.coords[run.start:run.stop]
        x0, y0 = int(c[0, 0]), int(c[0, 1])
        read_px = self.choice.read_px
        offsets = [self._level_offset(int(x) - x0) for x in c[:, 0]]
        region = self.reader.read_region(self.choice.level, x0, y0, offsets[-1] + read_px, read_px)
        px = self.choice.tile_px
        out = np.empty((len(c), px, px, 3), np.uint8)
        for k, off in enumerate(offsets):
            tile = region[:, off:off + read_px]
            if self.choice.needs_resize:
                tile = cv2.resize(tile, (px, px), interpolation=cv2.INTER_AREA)
            out[k] = tile
        return out

    def read_indices(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Read arbitrary tiles (one region read per tile; for random access)."""
        px = self.choice.tile_px
        out = np.empty((len(indices), px, px, 3), np.uint8)
        for k, i in enumerate(indices):
            out[k] = self.read_run(Run(int(i), int(i) + 1))[0]
        return out

    def iter_batches(self, batch_size: int = 64, num_threads: int | None = None,
                     read_ahead: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (tiles (B, px, px, 3) uint8, coords (B, 2) int64) in coords order.

        Closing the generator early cancels pending reads and joins the threads.
        """
        batch_size = positive_int(batch_size, "batch_size")
        runs = plan_runs(self.coords, self.stride)
        if not runs:
            return
        threads = num_threads or default_threads()
        window = read_ahead or max(2 * threads, 4)
        px = self.choice.tile_px
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sf-read")
        pending: deque[tuple[Run, Future]] = deque()
        next_run = 0
        buf = np.empty((batch_size, px, px, 3), np.uint8)
        buf_coords = np.empty((batch_size, 2), np.int64)
        filled = 0
        try:
            while next_run < len(runs) or pending:
                while next_run < len(runs) and len(pending) < window:
                    run = runs[next_run]
                    pending.append((run, pool.submit(self.read_run, run)))
                    next_run += 1
                run, fut = pending.popleft()
                tiles = fut.result()
                pos = 0
                while pos < len(tiles):
                    take = min(batch_size - filled, len(tiles) - pos)
                    buf[filled:filled + take] = tiles[pos:pos + take]
                    buf_coords[filled:filled + take] = self.coords[
                        run.start + pos:run.start + pos + take]
                    filled += take
                    pos += take
                    if filled == batch_size:
                        yield buf, buf_coords  # handed over: fresh buffers for the next batch
                        buf = np.empty_like(buf)
                        buf_coords = np.empty_like(buf_coords)
                        filled = 0
            if filled:
                yield buf[:filled], buf_coords[:filled]
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
