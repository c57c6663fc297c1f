"""Several extractors in one pass over a slide's tiles (`slideflow features -e a,b`).

Each source batch is read (and stain-normalised) once, then re-chunked for every extractor
to exactly the batch sizes a run of that extractor alone would see (full batches of its
`batch_size`, a shorter last one), so each bag is byte-identical to the one a separate run
writes, while the slide is read and decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..validate import positive_int
from .pipeline import Batch, Sink, _Prefetcher, forward_batch, run_features


def _cat(parts: list[Any]) -> Any:
    """Concatenate tile batches where they are: torch tensors with `torch.cat` on their device
    (GPU-decoded tiles never visit the host), numpy arrays with numpy."""
    if any(type(p).__module__.startswith("torch") for p in parts):
        import torch

        dev = next(p.device for p in parts if torch.is_tensor(p))
        return torch.cat([p if torch.is_tensor(p) else torch.from_numpy(p).to(dev)
                          for p in parts])
    return np.concatenate(parts)


class Rebatcher:
    """Incremental re-chunking of (tiles, coords) batches to a fixed batch size.

    Tiles may be numpy arrays or torch tensors (kept on their device); coords are numpy.
    """

    def __init__(self, batch_size: int):
        self.batch_size = positive_int(batch_size, "batch_size")  # 0 would loop forever
        self._tiles: list[Any] = []
        self._coords: list[np.ndarray] = []
        self._held = 0

    def push(self, tiles: Any, coords: np.ndarray) -> list[Batch]:
        """Add a batch; returns the full batches now ready (possibly none)."""
        if self._held == 0 and len(tiles) == self.batch_size:
            return [(tiles, coords)]
        self._tiles.append(tiles)
        self._coords.append(coords)
        self._held += len(tiles)
        ready = []
        while self._held >= self.batch_size:
            t, c = _cat(self._tiles), np.concatenate(self._coords)
            ready.append((t[: self.batch_size], c[: self.batch_size]))
            self._tiles, self._coords = [t[self.batch_size:]], [c[self.batch_size:]]
            self._held -= self.batch_size
        return ready

    def flush(self) -> list[Batch]:
        """The last, shorter batch (if any)."""
        if not self._held:
            return []
        out = [(_cat(self._tiles), np.concatenate(self._coords))]
        self._tiles, self._coords, self._held = [], [], 0
        return out


def run_features_many(extractors: Sequence[Any], source: Iterable[Batch], sinks: Sequence[Sink],
                      *, normalizer: Any = None, queue_depth: int = 4) -> int:
    """Stream `source` once through every extractor into its sink; returns the tile count.

    One extractor is the plain engine (`pipeline.run_features`).
    """
    if len(extractors) != len(sinks):
        raise ValueError(f"{len(extractors)} extractors but {len(sinks)} sinks")
    if len(extractors) == 1:
        return run_features(extractors[0], source, sinks[0], normalizer=normalizer,
                            queue_depth=queue_depth).tiles
    transform: Callable | None = normalizer.transform if normalizer is not None else None
    chunkers = [Rebatcher(e.batch_size) for e in extractors]
    prefetch = _Prefetcher(source, transform, queue_depth)
    tiles_seen = 0
    try:
        for tiles, coords in prefetch:
            tiles_seen += len(tiles)
            for ext, chunker, sink in zip(extractors, chunkers, sinks):
                for t, c in chunker.push(tiles, coords):
                    sink(forward_batch(ext, t), c)
        for ext, chunker, sink in zip(extractors, chunkers, sinks):
            for t, c in chunker.flush():
                sink(forward_batch(ext, t), c)
    finally:
        prefetch.close()
    return tiles_seen
