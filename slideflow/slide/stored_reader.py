"""Stored-tile reader: decode each stored JPEG tile once, cut and resample the output tiles.

For a JPEG-tiled level (see `stored.py`) the reader works out which stored tiles cover every
output tile, reads their compressed bytes (one read per contiguous span of the file), decodes
each stored tile exactly once per pass, even when several output tiles overlap it, and cuts the
output tiles from the decoded pixels, with the same INTER_AREA downscale as the region reader.

Output tile i covers the level pixels [round(x_i / ds), + read_px) in both axes (the level's
own pixel grid, as the DICOM and libvips backends read). Pixels past the level's edge and
missing tiles are white, as the region reader returns them.

Batches come out as `(tiles, coords)` in coords order, whatever the thread count:

- CPU decoder: tiles is a numpy uint8 (B, tile_px, tile_px, 3) array. A thread pool reads
  and decodes the stored tiles (simplejpeg, numpy copies and cv2 release the GIL); the thread
  that decodes a stored tile copies its parts into every output tile that needs them while it
  is in its cache, and resizes an output tile as soon as it is whole (`stored_sched.Scatter`).
  A batch array the consumer has dropped is reused for a later batch (`Scatter.recycle`).
- torch decoder: tiles is a torch uint8 (B, tile_px, tile_px, 3) contiguous tensor on the
  decoder's device; cutting (a gather) and area resampling run there (`stored_torch`).

`read_indices` (random access) decodes and cuts in the calling thread.

coords is always a numpy int64 (B, 2) array of level-0 top-left corners.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from ..imgheader import expect_shape
from .decode import CpuDecoder, TorchDecoder
from .stored_plan import StoredPlan
from .stored_sched import Scatter
from .stored_torch import iter_torch


def usable_cores() -> int:
    """CPU cores this process may run on (affinity/cgroup-aware where the OS says)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class StoredTileReader(StoredPlan):
    """Reads the tiles at `coords` (level-0 top-left) from a JPEG-tiled level."""

    # -- CPU path -------------------------------------------------------------------------
    def _decode_group(self, keys: list[int]) -> dict[int, np.ndarray | None]:
        raw = self.layout.read(keys)
        out: dict[int, np.ndarray | None] = {}
        for k in keys:
            data = raw[k]
            if data is None:
                out[k] = None
                continue
            try:
                stream = self.layout.stream(data)
                expect_shape(stream, (self.layout.tile_h, self.layout.tile_w), "stored tile")
                out[k] = self.decoder.decode(stream)
            except Exception as exc:
                raise OSError(self.tile_error(k, exc)) from exc
        return out

    def cut(self, i: int, tiles: dict[int, Any], out: np.ndarray | None = None) -> np.ndarray:
        """Output tile i (tile_px, tile_px, 3) from decoded stored tiles (numpy), written into
        `out` when given; an as-is read is pasted straight into it (no intermediate region)."""
        r, resize = self.choice.read_px, self.choice.needs_resize
        region = out if out is not None and not resize else np.empty((r, r, 3), np.uint8)
        if self._paste(i, tiles, region) != r * r:  # edge or missing tile: white background
            region[:] = 255
            self._paste(i, tiles, region)
        if not resize:
            return region
        px = self.choice.tile_px
        tile = cv2.resize(region, (px, px), interpolation=cv2.INTER_AREA)
        if out is None:
            return tile
        out[...] = tile
        return out

    def _paste(self, i: int, tiles: dict[int, Any], region: np.ndarray) -> int:
        """Copy the parts of the stored tiles inside output tile i; returns pixels covered."""
        lay, r = self.layout, self.choice.read_px
        lx, ly = int(self.lx[i]), int(self.ly[i])
        covered = 0
        for k in self.keys(i):
            tile = tiles[k]
            if tile is None:
                continue
            tx, ty = (k % lay.cols) * lay.tile_w, (k // lay.cols) * lay.tile_h
            xa, xb = max(lx, tx), min(lx + r, tx + tile.shape[1], lay.width)
            ya, yb = max(ly, ty), min(ly + r, ty + tile.shape[0], lay.height)
            if xb <= xa or yb <= ya:
                continue
            region[ya - ly:yb - ly, xa - lx:xb - lx] = tile[ya - ty:yb - ty, xa - tx:xb - tx]
            covered += (xb - xa) * (yb - ya)
        return covered

    def read_indices(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Read arbitrary tiles in the calling thread (random access), numpy output."""
        px = self.choice.tile_px
        out = np.empty((len(indices), px, px, 3), np.uint8)
        cpu = self.decoder if isinstance(self.decoder, CpuDecoder) else CpuDecoder()
        saved, self.decoder = self.decoder, cpu
        try:
            for n, i in enumerate(indices):
                decoded = self._decode_group(self.keys(int(i)))
                self.cut(int(i), decoded, out[n])
        finally:
            self.decoder = saved
        return out

    def iter_batches(self, batch_size: int = 64, num_threads: int | None = None,
                     read_ahead: int | None = None) -> Iterator[tuple[Any, np.ndarray]]:
        """Yield (tiles, coords (B, 2) int64) in coords order (see the module docstring)."""
        if isinstance(self.decoder, TorchDecoder):
            yield from iter_torch(self, batch_size)
            return
        if len(self.coords) == 0:
            return
        sched = Scatter(self, num_threads or usable_cores(), batch_size)
        # a URL's batches are fetched ahead on their own thread: one more batch in flight
        window = read_ahead or (3 if sched.remote else 2)
        nb = len(sched.batches)
        pending: deque[int] = deque()
        next_b = 0
        previous: np.ndarray | None = None
        try:
            while next_b < nb or pending:
                while next_b < nb and len(pending) < window:
                    sched.plan(next_b)
                    pending.append(next_b)
                    next_b += 1
                b = pending.popleft()
                out = sched.batches[b].wait()
                sched.release(b)
                batch = sched.batches[b]
                yield out, self.coords[batch.start:batch.stop].copy()
                # the consumer's loop variable still holds this batch; the previous one it
                # has let go of (or kept), so that one may be reused
                if previous is not None:
                    sched.recycle(previous, refs=1)
                previous = out
                del out
        finally:
            sched.close()
