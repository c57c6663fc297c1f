"""Several extractors in one pass over a slide's tiles (`slideflow features -e a,b`).

Each source batch is read (and stain-normalised) once, then re-chunked for every extractor
to exactly the batch sizes a run of that extractor alone would see (full batches of its
`batch_size`, a shorter last one), so each bag is byte-identical to the one a separate run
writes, while the slide is read and decoded once. The loop itself is the engine's
(`pipeline.run_many`): every extractor gets its own overlapped batch runner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .pipeline import Batch, Sink, run_many
from .validate import positive_int


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

    The engine's own loop (`pipeline.run_many`): one read, and per extractor its re-chunking
    (`Rebatcher`) and its overlapped batch runner.
    """
    return run_many(source, extractors, sinks, normalizer=normalizer,
                    queue_depth=queue_depth).tiles
