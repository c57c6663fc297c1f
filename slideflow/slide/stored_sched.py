"""The stored-tile reader's CPU schedule: decode each stored tile once and scatter it at once.

A worker reads a run of stored tiles, decodes each into its own reusable buffer (no allocation,
and the pixels stay in its cache), and copies every part of that tile that some output tile
needs straight into the output (an as-is read) or into that output's region buffer (a read to
be resized). The worker that delivers the last part of an output tile finishes it: the
INTER_AREA resize runs while the region is still hot, written into the output batch in place.

The copy into the output costs about a third of the decode on 2 cores, most of it writing
into memory not yet mapped: batch arrays the consumer has dropped are therefore reused (a
bounded process-wide spare list), and each worker decodes into one buffer of its own.
Nothing waits on anything: counters say when an output tile and a batch
are complete. Output batches are allocated when their first part arrives (a stored tile serves
output tiles of the next output row, so of a later batch), white-filled where an output tile
reaches past the level's edge; a missing stored tile paints its parts white.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from ..imgheader import check_pixels, expect_shape
from .stored_plan import StoredPlan

#: batch arrays kept for reuse across reads (a fresh array costs page faults: writing a tile
#: into one costs ~20x writing it into memory already mapped), at most this many bytes
SPARE_BYTES = 256 << 20
_spare: list[np.ndarray] = []
_spare_lock = threading.Lock()


def _take(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array of `shape`, a spare one when there is one."""
    with _spare_lock:
        for j, arr in enumerate(_spare):
            if arr.shape == shape:
                return _spare.pop(j)
    return np.empty(shape, np.uint8)


def _give(arr: np.ndarray) -> None:
    """Keep `arr` for reuse (newest first), within SPARE_BYTES."""
    with _spare_lock:
        _spare.insert(0, arr)
        total = 0
        for j, a in enumerate(_spare):
            total += a.nbytes
            if total > SPARE_BYTES:
                del _spare[j:]
                break


def _only_refs(arr: np.ndarray, refs: int) -> bool:
    """Whether `refs` references (held by the caller's caller) are all that `arr` has."""
    # + 3: the caller's parameter, this call's parameter and getrefcount's own argument
    return sys.getrefcount(arr) <= refs + 3 and arr.flags.owndata


def _probe_recycle(arr: np.ndarray, refs: int) -> bool:
    """`Scatter.recycle`'s call shape, for the probe below."""
    return _only_refs(arr, refs)


_COUNTS_EXACT: bool | None = None


def counts_are_exact() -> bool:
    """Whether this interpreter's reference counts tell a dropped batch from a kept one.

    Reuse must never overwrite an array a consumer still holds. Interpreters may count fewer
    references than are held (Python 3.14 borrows references on its evaluation stack; a
    free-threaded build counts per thread), so the reader's own pattern is replayed once: a
    generator yields arrays, the consumer keeps the first and drops the second. Anything but
    "kept: not free, dropped: free" turns reuse off (fresh arrays, the same pixels)."""
    global _COUNTS_EXACT
    if _COUNTS_EXACT is None:
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        seen: list[bool] = []

        def produce():
            previous = None
            for _ in range(3):
                out = np.empty(1, np.uint8)
                yield out
                if previous is not None:
                    seen.append(_probe_recycle(previous, refs=1))
                previous = out
                del out

        kept = [arr for i, arr in enumerate(produce()) if i == 0]
        _COUNTS_EXACT = bool(gil and kept and seen == [False, True])
    return _COUNTS_EXACT


class Batch:
    """One output batch: its array (allocated on first use), output tiles left, first error."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.out: np.ndarray | None = None
        self.left = stop - start
        self.error: BaseException | None = None
        self.event = threading.Event()

    def wait(self) -> np.ndarray:
        self.event.wait()
        if self.error is not None:
            raise self.error
        assert self.out is not None
        return self.out


class Scatter:
    """Runs read+decode+scatter tasks (runs of stored tiles) on a thread pool."""

    def __init__(self, reader: StoredPlan, threads: int, batch_size: int):
        self.r = reader
        lay, choice = reader.layout, reader.choice
        check_pixels(lay.tile_h, lay.tile_w, "stored tile")  # buffers are allocated this size
        n = len(reader.coords)
        self.batch_size = batch_size
        self.batches = [Batch(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
        self.resize = choice.needs_resize
        rpx = choice.read_px
        # output tiles that reach past the level's edge start white (as the region reader)
        self.partial = ((reader.lx + rpx > lay.width) | (reader.ly + rpx > lay.height)).tolist()
        self.lx, self.ly = reader.lx.tolist(), reader.ly.tolist()
        self.parts_left = [len(reader.keys(i)) for i in range(n)]
        self.empty = {i for i, left in enumerate(self.parts_left) if left == 0}  # all white
        self.outputs_of: dict[int, list[int]] = {}
        for i in range(n):
            for k in reader.keys(i):
                self.outputs_of.setdefault(k, []).append(i)
        self.regions: dict[int, np.ndarray] = {}
        self.free_regions: list[np.ndarray] = []
        self.submitted: set[int] = set()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sf-stored")
        # a URL: each batch's bytes are fetched on a thread of their own, so the next batch's
        # ranged GETs run while this one decodes (a local file is read by the workers); the
        # decodes are queued as the bytes arrive
        self.remote = bool(getattr(reader.layout.byte_source(), "remote", False))
        self.fetcher = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-fetch-ahead")
                        if self.remote else None)

    # -- planning (caller's thread) ---------------------------------------------------------
    def plan(self, b: int) -> Batch:
        """Queue the decodes batch b still needs (stored tiles no earlier batch asked for)."""
        r, batch = self.r, self.batches[b]
        done: list[int] = []
        with self.lock:
            self._alloc(batch)
            keys: dict[int, None] = {}
            for i in range(batch.start, self._fetch_stop(b)):
                if i in self.empty and i < batch.stop:
                    done.append(i)  # beyond the level's grid: no stored tile to wait for
                for k in r.keys(i):
                    if k not in self.submitted:
                        keys[k] = None
            self.submitted.update(keys)
        for i in done:
            self._finish(i)
        groups = r.groups(list(keys))
        if self.fetcher is not None and groups:
            # a URL: the batch's new tiles in a few merged ranged GETs, not one per group; a
            # group's decode is queued when its bytes are in, so no worker waits on a GET
            self.fetcher.submit(self._fetch, groups)
        else:
            for g in groups:
                self.pool.submit(self._run, g)
        return batch

    # -- fetching ahead (a URL; the fetcher thread) -----------------------------------------
    def _fetch(self, groups: list[list[int]]) -> None:
        try:
            self._fetch_groups(groups)
        except BaseException as exc:  # noqa: BLE001 - a bug here must fail the read, not hang it
            self._abort(exc)

    def _fetch_groups(self, groups: list[list[int]]) -> None:
        """Fetch the groups' tiles, queueing each group's decode as soon as its last tile's
        ranged GET has arrived; a failed fetch fails every group still waiting on it."""
        waiting = {j: len(g) for j, g in enumerate(groups)}
        group_of = {k: j for j, g in enumerate(groups) for k in g}
        lock = threading.Lock()

        def ready(keys: list[int]) -> None:
            go = []
            with lock:
                for k in keys:
                    j = group_of[k]
                    waiting[j] -= 1
                    if waiting[j] == 0:
                        del waiting[j]
                        go.append(groups[j])
            for g in go:
                self.pool.submit(self._run, g)

        try:
            self.r.layout.prefetch([k for g in groups for k in g], ready)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller by its batch
            with lock:
                failed = [groups[j] for j in waiting]
                waiting.clear()
            for g in failed:
                for k in g:
                    self._deliver(k, None, exc)

    def _fetch_stop(self, b: int) -> int:
        """Where the output tiles whose stored tiles plan(b) queues end: batch b's end, or
        for a URL the end of batch b + 1 when b is odd (batch 0 alone, so decoding starts
        soon; then two batches per fetch: half the requests, each costing the server and the
        reader's HTTP client more than its bytes do)."""
        if self.fetcher is not None and b % 2 == 1 and b + 1 < len(self.batches):
            b += 1
        return self.batches[b].stop

    def _alloc(self, batch: Batch) -> np.ndarray:
        """The batch's output array (under the lock): created on first use."""
        if batch.out is None:
            px = self.r.choice.tile_px
            shape = (batch.stop - batch.start, px, px, 3)
            batch.out = _take(shape)
            if not self.resize:
                for j, partial in enumerate(self.partial[batch.start:batch.stop]):
                    if partial:
                        batch.out[j] = 255
        return batch.out

    def _dest(self, i: int) -> np.ndarray:
        """Where output tile i's parts go (under the lock): its slot, or its region buffer."""
        if not self.resize:
            batch = self.batches[i // self.batch_size]
            return self._alloc(batch)[i - batch.start]
        region = self.regions.get(i)
        if region is None:
            rpx = self.r.choice.read_px
            region = self.regions[i] = (self.free_regions.pop() if self.free_regions
                                        else np.empty((rpx, rpx, 3), np.uint8))
            if self.partial[i]:
                region[:] = 255
        return region

    # -- workers ----------------------------------------------------------------------------
    def _buffer(self) -> np.ndarray:
        buf = getattr(self.local, "buf", None)
        if buf is None:
            lay = self.r.layout
            buf = self.local.buf = np.empty((lay.tile_h, lay.tile_w, 3), np.uint8)
        return buf

    def _decode(self, k: int, data: bytes) -> np.ndarray:
        """Stored tile k decoded into this thread's buffer; errors name the tile."""
        lay, dec = self.r.layout, self.r.decoder
        try:
            stream = lay.stream(data)
            into = getattr(dec, "decode_into", None)
            if into is None:
                expect_shape(stream, (lay.tile_h, lay.tile_w), "stored tile")
                return dec.decode(stream)
            try:
                tile = into(stream, self._buffer())
            except ValueError:
                expect_shape(stream, (lay.tile_h, lay.tile_w), "stored tile")  # names the size
                raise
            if tile.shape[:2] != (lay.tile_h, lay.tile_w):
                expect_shape(stream, (lay.tile_h, lay.tile_w), "stored tile")
            return tile
        except Exception as exc:
            raise OSError(self.r.tile_error(k, exc)) from exc

    def _run(self, keys: list[int]) -> None:
        try:
            self._read_decode_deliver(keys)
        except BaseException as exc:  # noqa: BLE001 - a bug here must fail the read, not hang it
            self._abort(exc)

    def _abort(self, exc: BaseException) -> None:
        """Fail every batch not yet complete with `exc` (raised in the caller), so an
        unexpected error in a task can never leave the caller waiting for parts that will not
        arrive."""
        with self.lock:
            for batch in self.batches:
                if not batch.event.is_set():
                    batch.error = batch.error or exc
                    batch.event.set()

    def _read_decode_deliver(self, keys: list[int]) -> None:
        try:
            raw = self.r.layout.read(keys)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller by every batch using it
            for k in keys:
                self._deliver(k, None, exc)
            return
        for k in keys:
            data, error, tile = raw[k], None, None
            if data is not None:
                try:
                    tile = self._decode(k, data)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller
                    error = exc
            self._deliver(k, tile, error)

    def _deliver(self, k: int, tile: np.ndarray | None, error: BaseException | None) -> None:
        """Copy stored tile k's parts into the output tiles that need them (white if missing)."""
        r = self.r
        lay, rpx = r.layout, r.choice.read_px
        tx, ty = (k % lay.cols) * lay.tile_w, (k // lay.cols) * lay.tile_h
        outs = self.outputs_of.get(k, [])
        with self.lock:
            dests = [self._dest(i) for i in outs] if error is None else []
        for i, dst in zip(outs, dests):
            lx, ly = self.lx[i], self.ly[i]
            xa, xb = max(lx, tx), min(lx + rpx, tx + lay.tile_w, lay.width)
            ya, yb = max(ly, ty), min(ly + rpx, ty + lay.tile_h, lay.height)
            if xb <= xa or yb <= ya:
                continue
            part = dst[ya - ly:yb - ly, xa - lx:xb - lx]
            if tile is None:
                part[...] = 255
            else:
                part[...] = tile[ya - ty:yb - ty, xa - tx:xb - tx]
        finished = []
        with self.lock:
            for i in outs:
                if error is not None:
                    batch = self.batches[i // self.batch_size]
                    batch.error = batch.error or error
                self.parts_left[i] -= 1
                if self.parts_left[i] == 0:
                    finished.append(i)
        for i in finished:
            self._finish(i)

    def _finish(self, i: int) -> None:
        """Output tile i has all its parts: resize it into its slot; count it off its batch."""
        batch = self.batches[i // self.batch_size]
        if self.resize:
            with self.lock:
                region = self.regions.pop(i, None)
                out = self._alloc(batch)[i - batch.start]
            try:
                if region is None:  # no stored tile inside the level: all white
                    out[...] = 255
                elif batch.error is None:
                    px = self.r.choice.tile_px
                    cv2.resize(region, (px, px), dst=out, interpolation=cv2.INTER_AREA)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller
                batch.error = batch.error or exc
            if region is not None:
                with self.lock:
                    self.free_regions.append(region)
        self._count(batch)

    def _count(self, batch: Batch) -> None:
        with self.lock:
            batch.left -= 1
            if batch.left == 0:
                batch.event.set()

    def release(self, b: int) -> None:
        """Forget batch b's array (the caller has it)."""
        self.batches[b].out = None

    def recycle(self, out: np.ndarray, refs: int) -> None:
        """Reuse a yielded batch's array for a later batch when `refs` (the references the
        caller's generator holds, counted by the caller) are all there are: the consumer has
        dropped it and kept no view (a view, a torch tensor from it, a memoryview all hold a
        reference)."""
        if counts_are_exact() and _only_refs(out, refs):
            _give(out)

    def close(self) -> None:
        """Stop the workers; batches never handed out are kept for reuse."""
        if self.fetcher is not None:  # first: a running fetch still queues decodes
            self.fetcher.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        for batch in self.batches:
            if batch.out is not None:
                _give(batch.out)
                batch.out = None
