"""The streaming engine: tiles -> (stain normalisation) -> preprocessing -> model -> sink.

Every feature path uses it: `extractor(wsi)`, `extractor('x.tfrecords')`,
`generate_feature_bags` and the CLI differ only in their tile source and their sink.

    source (reader thread pool, bounded read-ahead)            uint8 (B, H, W, 3) + coords
      -> prefetch thread: optional normaliser, bounded queue   (overlaps with the model)
      -> main thread: torch.from_numpy -> NCHW view (channels_last memory) -> preprocess -> model
      -> sink(features (B, D) float32, coords (B, 2))          rows in source order

Memory stays flat: at most `queue_depth` batches wait between stages, and sinks stream rows.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .io.tfrecord import TFRecord

Batch = tuple[np.ndarray, np.ndarray]  # uint8 (B, H, W, 3), int64 (B, 2)
Sink = Callable[[np.ndarray, np.ndarray], None]

_DONE = object()


@dataclass
class RunStats:
    """What one engine run did, for logs and benchmarks."""

    tiles: int = 0
    batches: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    wait_seconds: float = 0.0

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0


class _Prefetcher:
    """Runs `source` (and an optional per-batch transform) in a thread, `depth` batches ahead."""

    def __init__(self, source: Iterable[Batch], transform: Callable[[np.ndarray], np.ndarray]
                 | None, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._source = source
        self._transform = transform
        self._thread = threading.Thread(target=self._run, name="sf-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        it = iter(self._source)
        try:
            for tiles, coords in it:
                if self._transform is not None and len(tiles):
                    tiles = self._transform(tiles)
                if not self._put((tiles, coords)):
                    break
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        try:  # unblock a producer waiting on a full queue
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=30)


def run_features(extractor: Any, source: Iterable[Batch], sink: Sink, *,
                 normalizer: Any = None, queue_depth: int = 4) -> RunStats:
    """Stream `source` through `extractor` into `sink`; returns timing statistics.

    `source` yields uint8 NHWC batches with their coordinates; `sink` receives float32 (B, D)
    features and the same coordinates, in source order.
    """
    stats = RunStats()
    transform = normalizer.transform if normalizer is not None else None
    prefetch = _Prefetcher(_rebatch(source, extractor.batch_size), transform, queue_depth)
    start = time.perf_counter()
    try:
        t_wait = time.perf_counter()
        for tiles, coords in prefetch:
            t0 = time.perf_counter()
            stats.wait_seconds += t0 - t_wait
            feats = forward_batch(extractor, tiles)
            stats.model_seconds += time.perf_counter() - t0
            sink(feats, coords)
            stats.tiles += len(tiles)
            stats.batches += 1
            t_wait = time.perf_counter()
    finally:
        prefetch.close()
    stats.seconds = time.perf_counter() - start
    return stats


def forward_batch(extractor: Any, tiles: np.ndarray) -> np.ndarray:
    """Features (B, D) float32 of one uint8 NHWC batch (preprocess + model, no grad)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)
    x = x.to(extractor.device, non_blocking=True)
    with torch.inference_mode():
        feats = extractor.forward_preprocessed(extractor.preprocess(x))
    return feats.float().cpu().numpy()


def _rebatch(source: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Re-chunk a stream of batches to exactly `batch_size` (the last may be shorter)."""
    from .fanout import Rebatcher

    chunker = Rebatcher(batch_size)
    for tiles, coords in source:
        yield from chunker.push(tiles, coords)
    yield from chunker.flush()


class RowCollector:
    """A sink that keeps all rows in memory (grown geometrically, no list of small arrays)."""

    def __init__(self, num_features: int):
        self.features = np.empty((0, num_features), np.float32)
        self.coords = np.empty((0, 2), np.int64)
        self.n = 0

    def __call__(self, feats: np.ndarray, coords: np.ndarray) -> None:
        need = self.n + len(feats)
        if need > len(self.features):
            cap = max(need, 2 * len(self.features), 256)
            self.features = _grow(self.features, cap)
            self.coords = _grow(self.coords, cap)
        self.features[self.n:need] = feats
        self.coords[self.n:need] = coords
        self.n = need

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.features[: self.n], self.coords[: self.n]


def _grow(arr: np.ndarray, rows: int) -> np.ndarray:
    out = np.empty((rows, *arr.shape[1:]), arr.dtype)
    out[: len(arr)] = arr
    return out


class FeatureGrid(np.ma.MaskedArray):
    """Masked (grid_h, grid_w, D) features aligned with `wsi.grid` (axis 0 = rows = y,
    axis 1 = columns = x); masked where no tile was kept.

    `.coords` (N, 2) level-0 top-left of the kept tiles and `.rows` (N, D) their features, in
    `wsi.coords` order.
    """

    coords: np.ndarray
    rows: np.ndarray

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        self.coords = getattr(obj, "coords", None)
        self.rows = getattr(obj, "rows", None)


def wsi_features(extractor: Any, wsi: Any, *, normalizer: Any = None,
                 num_threads: int | None = None) -> FeatureGrid:
    """Features for every kept tile of `wsi`, as a masked grid (see `FeatureGrid`)."""
    collector = RowCollector(extractor.num_features)
    run_features(extractor, wsi.tiles(batch_size=extractor.batch_size, num_threads=num_threads),
                 collector, normalizer=normalizer)
    feats, coords = collector.result()
    grid = wsi.grid
    data = np.zeros((*grid.shape, extractor.num_features), np.float32)
    rows, cols = np.nonzero(grid)
    data[rows, cols] = feats
    mask = np.broadcast_to(~grid[..., None], data.shape).copy()
    out = FeatureGrid(data, mask=mask)
    out.coords, out.rows = coords, feats
    return out


def tfrecord_source(path: Any, batch_size: int = 64, num_threads: int | None = None
                    ) -> Iterator[Batch]:
    """Decoded tiles of one TFRecord in record order, with the stored (centre) locations."""
    return TFRecord(path).iter_batches(batch_size, num_threads=num_threads)


def tfrecord_features(extractor: Any, path: Any, *, normalizer: Any = None,
                      num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), locations (N, 2)) for a TFRecord; locations as stored (tile centres)."""
    collector = RowCollector(extractor.num_features)
    run_features(extractor, tfrecord_source(path, extractor.batch_size, num_threads), collector,
                 normalizer=normalizer)
    return collector.result()
