"""Re-chunking a stream of tile batches to one batch size, where the tiles are (numpy on the
host, torch tensors on their device). The streaming loop (`engine.pipeline`) uses it so an
extractor sees exactly the batches a run of it alone would see; it sits below the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..validate import positive_int

Batch = tuple[Any, np.ndarray]  # uint8 (B, H, W, 3) numpy or tensor, int64 (B, 2)


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
