"""The streaming engine: one path from tiles to outputs for every entry point.

    source     slide reader (`wsi.tiles`) | TFRecord reader (`tfrecord_source`)
               -> uint8 (B, H, W, 3) batches + coords, in plan order; numpy on the CPU decoder,
                  torch tensors on the device with the nvJPEG decoder
    prefetch   a thread runs the source and the optional stain normaliser, `queue_depth` ahead
    model      optional: `BatchRunner` (pinned copies on a side stream, forward overlapped with
               the next copy, features handed out `depth` batches later)
    sink       TFRecord writer (`slideflow.extract.writer`) | bag writers | `RowCollector`

`run(source, sink)` is tile extraction (the sink gets uint8 tiles); `run(source, sink,
extractor=...)` is feature extraction (the sink gets float32 (B, D) features). Rows reach the
sink in source order. Memory stays flat: at most `queue_depth` batches wait between stages.

Dispatch on input type (`extractor(wsi)`, `extractor('x.tfrecords')`) lives here:
`call_extractor` is registered with `slideflow.hooks` by the package root, so the model layer
never imports the engine or knows what a slide is.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.tfrecord import TFRecord
from ..slide import decode as slide_decode  # TorchDecoder looked up per call (tests swap it)
from .protocols import Extractor
from .rebatch import Batch, Rebatcher
from .tfrecord_decode import nvjpeg_batches

Sink = Callable[[Any, np.ndarray], None]

_DONE = object()


@dataclass
class RunStats:
    """What one engine run did, for logs and benchmarks."""

    tiles: int = 0
    batches: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    wait_seconds: float = 0.0
    normalize_seconds: float = 0.0

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0


class _Prefetcher:
    """Runs `source` (and an optional per-batch transform) in a thread, `depth` batches ahead."""

    def __init__(self, source: Iterable[Batch], transform: Callable[[Any], Any] | None,
                 depth: int, stats: RunStats | None = None):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._source = source
        self._transform = transform
        self._stats = stats if stats is not None else RunStats()
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
                    t0 = time.perf_counter()
                    tiles = self._transform(tiles)
                    self._stats.normalize_seconds += time.perf_counter() - t0
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


def _normaliser(normalizer: Any) -> Callable[[Any], Any] | None:
    if normalizer is None:
        return None

    def transform(tiles: Any) -> Any:
        out = normalizer.transform(tiles)
        return np.ascontiguousarray(out, np.uint8) if isinstance(out, np.ndarray) else out

    return transform


class _ModelStage:
    """One extractor's stage of a run: optional re-chunking to its batch size, its own
    `BatchRunner` (pinned copies overlapped with compute on CUDA), and its sink."""

    def __init__(self, extractor: Extractor, sink: Sink, rebatch_to: int | None):
        from ..model.extractors.runner import BatchRunner

        self.runner = BatchRunner(extractor)
        self.sink = sink
        self.chunker = Rebatcher(rebatch_to) if rebatch_to is not None else None

    def push(self, tiles: Any, coords: np.ndarray) -> None:
        batches = self.chunker.push(tiles, coords) if self.chunker else [(tiles, coords)]
        for t, c in batches:
            self._emit(self.runner.submit(t, c))

    def finish(self) -> None:
        for t, c in self.chunker.flush() if self.chunker else []:
            self._emit(self.runner.submit(t, c))
        self._emit(self.runner.drain())

    def _emit(self, ready: list[tuple[np.ndarray, Any]]) -> None:
        for feats, c in ready:
            self.sink(feats, c)


def run(source: Iterable[Batch], sink: Sink, *, extractor: Extractor | None = None,
        normalizer: Any = None, queue_depth: int = 4, batch_size: int | None = None
        ) -> RunStats:
    """Stream `source` (-> normaliser) (-> extractor) into `sink`; returns timing statistics.

    Without an extractor the sink receives the (normalised) uint8 tiles; with one it receives
    float32 (B, D) features, `batch_size` (default: the extractor's) rows at a time.
    Coordinates pass through.
    """
    if extractor is None:
        return _stream(source, [], sink, normalizer, queue_depth)
    # one extractor: re-chunked in the prefetch thread, off the model's critical path
    return _stream(_rebatch(source, batch_size or extractor.batch_size),
                   [_ModelStage(extractor, sink, None)], None, normalizer, queue_depth)


def run_many(source: Iterable[Batch], extractors: Sequence[Extractor], sinks: Sequence[Sink], *,
             normalizer: Any = None, queue_depth: int = 4,
             batch_sizes: Sequence[int | None] | None = None) -> RunStats:
    """`run` with several extractors: the source is read (and normalised) once and every
    extractor gets its own re-chunking to its batch size (`batch_sizes`, default each
    extractor's) and its own overlapped batch runner, so each sink receives exactly what a run
    of that extractor alone would give it."""
    if len(extractors) != len(sinks):
        raise ValueError(f"{len(extractors)} extractors but {len(sinks)} sinks")
    sizes = [b or e.batch_size for e, b in zip(extractors, batch_sizes or [None] * len(sinks))]
    if len(extractors) == 1:
        return run(source, sinks[0], extractor=extractors[0], normalizer=normalizer,
                   queue_depth=queue_depth, batch_size=sizes[0])
    stages = [_ModelStage(e, s, b) for e, s, b in zip(extractors, sinks, sizes)]
    return _stream(source, stages, None, normalizer, queue_depth)


def _stream(source: Iterable[Batch], stages: list[_ModelStage], sink: Sink | None,
            normalizer: Any, queue_depth: int) -> RunStats:
    """The one streaming loop: prefetch thread -> model stages (or the tile sink)."""
    stats = RunStats()
    prefetch = _Prefetcher(source, _normaliser(normalizer), queue_depth, stats)
    start = time.perf_counter()
    try:
        t_wait = time.perf_counter()
        for tiles, coords in prefetch:
            t0 = time.perf_counter()
            stats.wait_seconds += t0 - t_wait
            if sink is not None:
                sink(tiles, coords)
            for stage in stages:
                stage.push(tiles, coords)
            stats.model_seconds += time.perf_counter() - t0 if stages else 0.0
            stats.tiles += len(tiles)
            stats.batches += 1
            t_wait = time.perf_counter()
        t0 = time.perf_counter()
        for stage in stages:
            stage.finish()
        stats.model_seconds += time.perf_counter() - t0 if stages else 0.0
    finally:
        prefetch.close()
    stats.seconds = time.perf_counter() - start
    return stats


def run_features(extractor: Extractor, source: Iterable[Batch], sink: Sink, *,
                 normalizer: Any = None, queue_depth: int = 4) -> RunStats:
    """Features configuration of `run`: sink receives float32 (B, D) features + coords."""
    return run(source, sink, extractor=extractor, normalizer=normalizer,
               queue_depth=queue_depth)


def _rebatch(source: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Re-chunk a stream of batches to exactly `batch_size` (the last may be shorter)."""
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


def wsi_features(extractor: Extractor, wsi: Any, *, normalizer: Any = None,
                 num_threads: int | None = None, **read_options: Any) -> FeatureGrid:
    """Features for every kept tile of `wsi`, as a masked grid (see `FeatureGrid`).

    `read_options` go to `wsi.tiles` (e.g. the reader's `decoder=`), which refuses unknown ones;
    the decoder defaults to the extractor's CUDA device (see `slide_read_options`).
    """
    collector = RowCollector(extractor.num_features)
    read_options = {**slide_read_options(extractor), **read_options}
    run(wsi.tiles(batch_size=extractor.batch_size, num_threads=num_threads, **read_options),
        collector, extractor=extractor, normalizer=normalizer)
    feats, coords = collector.result()
    grid = wsi.grid
    data = np.zeros((*grid.shape, extractor.num_features), np.float32)
    rows, cols = np.nonzero(grid)
    data[rows, cols] = feats
    mask = np.broadcast_to(~grid[..., None], data.shape).copy()
    out = FeatureGrid(data, mask=mask)
    out.coords, out.rows = coords, feats
    return out


def tfrecord_source(path: Any, batch_size: int = 64, num_threads: int | None = None, *,
                    decoder: str = "cpu", device: Any = None) -> Iterator[Batch]:
    """Decoded tiles of one TFRecord in record order, with the stored (centre) locations.

    `decoder='cpu'`: libjpeg-turbo/PNG in a thread pool -> numpy. `decoder='nvjpeg'`:
    `torchvision.io.decode_jpeg` on `device` (nvJPEG on CUDA) -> uint8 NHWC tensors there;
    PNG records fall back to the CPU decoder.
    """
    if decoder == "cpu":
        return TFRecord(path).iter_batches(batch_size, num_threads=num_threads)
    if decoder != "nvjpeg":
        raise ValueError(f"decoder must be 'cpu' or 'nvjpeg', not {decoder!r}")

    return nvjpeg_batches(TFRecord(path), batch_size, device, num_threads)


def gpu_decode_device(extractor: Extractor) -> str | None:
    """Where tiles for `extractor` are decoded by torchvision (nvJPEG): its CUDA device; None
    for the CPU decoders (the extractor is elsewhere)."""
    device = getattr(extractor, "device", None)
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    return str(device)


def default_decoder(extractor: Extractor) -> str:
    """TFRecord tiles: nvJPEG when the extractor runs on CUDA, else the CPU decoders."""
    return "nvjpeg" if gpu_decode_device(extractor) else "cpu"


def slide_read_options(extractor: Extractor) -> dict[str, Any]:
    """`wsi.tiles` options for feeding `extractor`: on CUDA the slide reader decodes (nvJPEG),
    cuts and resamples on the extractor's device, so tiles reach it without a host round trip;
    otherwise nothing (the reader's CPU default)."""
    device = gpu_decode_device(extractor)
    if device is None:
        return {}

    return {"decoder": slide_decode.TorchDecoder(device)}


def tfrecord_features(extractor: Extractor, path: Any, *, normalizer: Any = None,
                      num_threads: int | None = None, decoder: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), locations (N, 2)) for a TFRecord; locations as stored (tile centres)."""
    collector = RowCollector(extractor.num_features)
    source = tfrecord_source(path, extractor.batch_size, num_threads,
                             decoder=decoder or default_decoder(extractor),
                             device=gpu_decode_device(extractor) or extractor.device)
    run(source, collector, extractor=extractor, normalizer=normalizer)
    return collector.result()


def call_extractor(extractor: Extractor, x: Any, **kwargs: Any) -> Any:
    """`extractor(x)` for inputs that are not arrays: a WSI -> `FeatureGrid`, a `.tfrecords`
    path -> (features, locations); anything else -> NotImplemented."""
    if hasattr(x, "grid") and hasattr(x, "tiles"):  # a WSI (or anything with its tile API)
        return wsi_features(extractor, x, **kwargs)
    if isinstance(x, (str, Path)) and str(x).endswith(".tfrecords"):
        return tfrecord_features(extractor, x, **kwargs)
    return NotImplemented
