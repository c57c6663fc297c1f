"""Stored-tile reader: decode each stored JPEG tile once, cut and resample the output tiles.

For a JPEG-tiled level (see `stored.py`) the reader works out which stored tiles cover every
output tile, reads their compressed bytes (one read per contiguous span of the file), decodes
each stored tile exactly once per pass, even when several output tiles overlap it, and cuts the
output tiles from the decoded pixels, with the same INTER_AREA downscale as the region reader.

Output tile i covers the level pixels [round(x_i / ds), + read_px) in both axes (the level's
own pixel grid, as the DICOM and libvips backends read). Pixels past the level's edge and
missing tiles are white, as the region reader returns them.

Batches come out as `(tiles, coords)` in coords order, whatever the thread count:

- CPU decoder: tiles is a numpy uint8 (B, tile_px, tile_px, 3) array. Reads, decodes and cuts
  run in a thread pool (simplejpeg, numpy copies and cv2 release the GIL). A cut task waits
  on nothing: it counts the decode groups it needs, and the thread that finishes the last of
  them cuts at once, while those stored tiles are still in its cache (`_Scheduler`).
- torch decoder: tiles is a torch uint8 (B, tile_px, tile_px, 3) contiguous tensor on the
  decoder's device; cutting (a gather) and area resampling run there, so a CUDA decoder hands
  tiles to the model without a host round trip.

coords is always a numpy int64 (B, 2) array of level-0 top-left corners.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from ..imgheader import expect_shape
from .backends.base import level_pixel
from .decode import CpuDecoder, TorchDecoder, area_resize_torch, make_decoder
from .geometry import LevelChoice
from .stored import StoredLevel

#: stored tiles per read+decode task (one contiguous row segment)
GROUP = 4
#: output tiles per cut task
CUT_CHUNK = 16


def usable_cores() -> int:
    """CPU cores this process may run on (affinity/cgroup-aware where the OS says)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class StoredTileReader:
    """Reads the tiles at `coords` (level-0 top-left) from a JPEG-tiled level."""

    def __init__(self, layout: StoredLevel, coords: np.ndarray, choice: LevelChoice,
                 decoder: Any = "cpu"):
        self.layout = layout
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.choice = choice
        self.decoder = make_decoder(decoder)
        ds = choice.downsample
        self.lx = level_pixel(self.coords[:, 0], ds)
        self.ly = level_pixel(self.coords[:, 1], ds)
        r, lay = choice.read_px, layout
        self.c0 = np.minimum(self.lx // lay.tile_w, lay.cols)
        self.c1 = np.minimum((self.lx + r - 1) // lay.tile_w, lay.cols - 1)
        self.r0 = np.minimum(self.ly // lay.tile_h, lay.rows)
        self.r1 = np.minimum((self.ly + r - 1) // lay.tile_h, lay.rows - 1)
        # python ints for the per-tile planning loops (numpy scalars are ~10x slower to index)
        self._spans = list(zip(self.r0.tolist(), self.r1.tolist(), self.c0.tolist(),
                               self.c1.tolist()))

    # -- planning -------------------------------------------------------------------------
    def keys(self, i: int) -> list[int]:
        """Flat indices of the stored tiles output tile i overlaps (row-major)."""
        cols = self.layout.cols
        r0, r1, c0, c1 = self._spans[i]
        return [r * cols + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]

    def batch_keys(self, start: int, stop: int) -> list[int]:
        seen: dict[int, None] = {}
        for i in range(start, stop):
            for k in self.keys(i):
                seen[k] = None
        return list(seen)

    def _groups(self, keys: list[int]) -> list[list[int]]:
        """Sorted keys split into runs of neighbours in one stored row, at most GROUP long."""
        groups: list[list[int]] = []
        cols = self.layout.cols
        for k in sorted(keys):
            g = groups[-1] if groups else None
            if g and k == g[-1] + 1 and k // cols == g[-1] // cols and len(g) < GROUP:
                g.append(k)
            else:
                groups.append([k])
        return groups

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
                raise OSError(self._tile_error(k, exc)) from exc
        return out

    def _tile_error(self, k: int, exc: Exception) -> str:
        cols = self.layout.cols
        return (f"stored tile (col {k % cols}, row {k // cols}) of level {self.choice.level} "
                f"cannot be decoded: {exc}")

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

    def _cut_into(self, out: np.ndarray, start: int, stop: int, base: int,
                  tiles: dict[int, Any]) -> None:
        """Output tiles start..stop into out[start - base:]."""
        for i in range(start, stop):
            self.cut(i, tiles, out[i - base])

    def iter_batches(self, batch_size: int = 64, num_threads: int | None = None,
                     read_ahead: int | None = None) -> Iterator[tuple[Any, np.ndarray]]:
        """Yield (tiles, coords (B, 2) int64) in coords order (see the module docstring)."""
        if isinstance(self.decoder, TorchDecoder):
            yield from self._iter_torch(batch_size)
            return
        n = len(self.coords)
        if n == 0:
            return
        threads = num_threads or usable_cores()
        window = read_ahead or 2
        px = self.choice.tile_px
        bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
        last_use: dict[int, int] = {}
        batch_keys = []
        for b, (a, z) in enumerate(bounds):
            ks = self.batch_keys(a, z)
            batch_keys.append(ks)
            for k in ks:
                last_use[k] = b
        chunk = max(1, min(CUT_CHUNK, -(-batch_size // threads)))
        sched = _Scheduler(self, threads)
        pending: deque[tuple[int, np.ndarray, _Batch]] = deque()
        next_b = 0
        try:
            while next_b < len(bounds) or pending:
                while next_b < len(bounds) and len(pending) < window:
                    a, z = bounds[next_b]
                    out = np.empty((z - a, px, px, 3), np.uint8)
                    done = sched.plan(out, a, z, chunk, batch_keys[next_b])
                    pending.append((next_b, out, done))
                    next_b += 1
                b, out, done = pending.popleft()
                done.wait()
                sched.release([k for k in batch_keys[b] if last_use[k] == b])
                a, z = bounds[b]
                yield out, self.coords[a:z].copy()
        finally:
            sched.close()

    # -- torch path -----------------------------------------------------------------------
    def _iter_torch(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
        import torch

        dec: TorchDecoder = self.decoder  # type: ignore[assignment]
        lay = self.layout
        n = len(self.coords)
        white = torch.full((lay.tile_h, lay.tile_w, 3), 255, dtype=torch.uint8, device=dec.device)
        held: dict[int, Any] = {}
        last_use: dict[int, int] = {}
        bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
        keys_of = [self.batch_keys(a, z) for a, z in bounds]
        for b, ks in enumerate(keys_of):
            for k in ks:
                last_use[k] = b
        mats: dict = {}
        for b, (a, z) in enumerate(bounds):
            new = [k for k in keys_of[b] if k not in held]
            raw = lay.read(new)
            present = [k for k in new if raw[k] is not None]
            streams = [lay.stream(raw[k]) for k in present]
            for k, st in zip(present, streams):  # sizes checked before the batch is decoded
                try:
                    expect_shape(st, (lay.tile_h, lay.tile_w), "stored tile")
                except ValueError as exc:
                    raise OSError(self._tile_error(k, exc)) from None
            try:
                decoded = dec.decode_many(streams)
            except Exception as exc:
                raise OSError(f"stored tiles of level {self.choice.level} cannot be decoded "
                              f"on {dec.device}: {exc}") from exc
            for k in new:
                held[k] = None
            for k, t in zip(present, decoded):
                held[k] = _pad_hwc(t.permute(1, 2, 0), lay.tile_h, lay.tile_w)
            tiles = self._gather(a, z, keys_of[b], held, white)
            if self.choice.needs_resize:
                tiles = area_resize_torch(tiles, self.choice.tile_px, mats)
            for k in keys_of[b]:
                if last_use[k] == b:
                    del held[k]
            yield tiles.contiguous(), self.coords[a:z].copy()

    def _gather(self, a: int, z: int, keys: list[int], held: dict[int, Any], white: Any) -> Any:
        """uint8 (z - a, read_px, read_px, 3) regions cut from the held tiles by one gather."""
        import torch

        lay, r, dev = self.layout, self.choice.read_px, white.device
        stack = torch.stack([held[k] if held[k] is not None else white for k in keys] + [white])
        lut = torch.full((lay.rows * lay.cols,), len(keys), dtype=torch.int64)
        lut[torch.as_tensor(keys, dtype=torch.int64)] = torch.arange(len(keys))
        lut = lut.to(dev)
        step = torch.arange(r, device=dev)
        gx = torch.as_tensor(self.lx[a:z], device=dev)[:, None] + step  # (B, r)
        gy = torch.as_tensor(self.ly[a:z], device=dev)[:, None] + step
        col = torch.clamp(gx // lay.tile_w, max=lay.cols - 1)
        row = torch.clamp(gy // lay.tile_h, max=lay.rows - 1)
        idx = lut[row[:, :, None] * lay.cols + col[:, None, :]]  # (B, r, r)
        outside = (gy >= lay.height)[:, :, None] | (gx >= lay.width)[:, None, :]
        idx = torch.where(outside, len(keys), idx)
        iy = (gy % lay.tile_h)[:, :, None].expand_as(idx)
        ix = (gx % lay.tile_w)[:, None, :].expand_as(idx)
        return stack[idx, iy, ix]


class _Batch:
    """One batch in flight: how many of its cut chunks are left, and the first error."""

    def __init__(self, chunks: int):
        self.left = chunks
        self.error: BaseException | None = None
        self.event = threading.Event()

    def wait(self) -> None:
        self.event.wait()
        if self.error is not None:
            raise self.error


class _Group:
    """A decode task (a run of stored tiles): done flag, error, cut chunks waiting on it."""

    __slots__ = ("keys", "done", "error", "waiting")

    def __init__(self, keys: list[int]):
        self.keys = keys
        self.done = False
        self.error: BaseException | None = None
        self.waiting: list[_Cut] = []


class _Cut:
    """A cut task: output tiles start..stop of a batch, and how many decode groups it awaits."""

    __slots__ = ("left", "out", "start", "stop", "base", "batch")

    def __init__(self, left: int, out: np.ndarray, start: int, stop: int, base: int,
                 batch: _Batch):
        self.left, self.out, self.start, self.stop, self.base, self.batch = (
            left, out, start, stop, base, batch)


class _Scheduler:
    """Runs decode groups and cut chunks on a thread pool with dependency counts, not waits.

    A blocking `future.result()` inside a cut task idles its worker while another decodes; on
    two cores that cost 10-20 % of the reader's rate. Here the thread that completes the last
    decode group a cut chunk needs runs that chunk immediately (the tiles are cache-hot), and a
    chunk whose groups are already done is queued directly. Decoded tiles live in `tiles` until
    the last batch that uses them has been yielded (`release`).
    """

    def __init__(self, reader: StoredTileReader, threads: int):
        self.reader = reader
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sf-stored")
        self.lock = threading.Lock()
        self.tiles: dict[int, Any] = {}  # decoded stored tiles (None: missing in the file)
        self.group_of: dict[int, _Group] = {}

    def plan(self, out: np.ndarray, a: int, z: int, chunk: int, keys: list[int]) -> _Batch:
        """Queue the decodes and cuts of output tiles a..z (writing into out)."""
        r = self.reader
        batch = _Batch(-(-(z - a) // chunk))
        ready: list[_Cut] = []
        with self.lock:
            groups = [_Group(g) for g in r._groups([k for k in keys if k not in self.group_of])]
            for g in groups:
                for k in g.keys:
                    self.group_of[k] = g
            for s in range(a, z, chunk):
                e = min(s + chunk, z)
                deps = {id(g): g for i in range(s, e) for k in r.keys(i)
                        for g in (self.group_of[k],)}
                for g in deps.values():
                    if g.done and g.error is not None and batch.error is None:
                        batch.error = g.error
                waits = [g for g in deps.values() if not g.done]
                cut = _Cut(len(waits), out, s, e, a, batch)
                for g in waits:
                    g.waiting.append(cut)
                if not waits:
                    ready.append(cut)
        # a URL: the batch's new tiles in a few merged ranged GETs, not one request per group
        r.layout.prefetch([k for g in groups for k in g.keys])
        for g in groups:
            self.pool.submit(self._decode, g)
        for cut in ready:
            self.pool.submit(self._cut, cut)
        return batch

    def _decode(self, group: _Group) -> None:
        try:
            decoded, error = self.reader._decode_group(group.keys), None
        except BaseException as exc:  # noqa: BLE001 - raised in the caller by every batch using it
            decoded, error = {}, exc
        with self.lock:
            self.tiles.update(decoded)
            group.done, group.error = True, error
            ready = []
            for cut in group.waiting:
                if error is not None and cut.batch.error is None:
                    cut.batch.error = error
                cut.left -= 1
                if cut.left == 0:
                    ready.append(cut)
            group.waiting = []
        for cut in ready:
            self._cut(cut)

    def _cut(self, cut: _Cut) -> None:
        batch = cut.batch
        try:
            if batch.error is None:
                self.reader._cut_into(cut.out, cut.start, cut.stop, cut.base, self.tiles)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            batch.error = batch.error or exc
        with self.lock:
            batch.left -= 1
            if batch.left == 0:
                batch.event.set()

    def release(self, keys: list[int]) -> None:
        """Forget stored tiles no later batch uses."""
        with self.lock:
            for k in keys:
                self.tiles.pop(k, None)
                self.group_of.pop(k, None)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _pad_hwc(t: Any, h: int, w: int) -> Any:
    """A decoded (H, W, 3) tile padded with white to the stored tile size (short edge frames)."""
    if t.shape[0] == h and t.shape[1] == w:
        return t
    import torch

    out = torch.full((h, w, 3), 255, dtype=torch.uint8, device=t.device)
    out[: min(h, t.shape[0]), : min(w, t.shape[1])] = t[:h, :w]
    return out
