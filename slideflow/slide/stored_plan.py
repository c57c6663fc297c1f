"""The stored-tile reader's plan: which stored tiles each output tile overlaps.

Output tile i covers the level pixels [round(x_i / ds), + read_px) in both axes (the level's
own pixel grid); the stored tiles under that square are its keys (flat row-major indices).
Reads are grouped in short runs of neighbours in one stored row (one contiguous span of the
file, one task).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends.base import level_pixel
from .decode import make_decoder
from .geometry import LevelChoice
from .stored import StoredLevel

#: stored tiles per read+decode task (one contiguous row segment)
GROUP = 4


class StoredPlan:
    """Which stored tiles each output tile at `coords` (level-0 top-left) overlaps, and where."""

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

    def groups(self, keys: list[int]) -> list[list[int]]:
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

    def tile_error(self, k: int, exc: Exception) -> str:
        """Message for stored tile k that cannot be read or decoded."""
        cols = self.layout.cols
        return (f"stored tile (col {k % cols}, row {k // cols}) of level {self.choice.level} "
                f"cannot be decoded: {exc}")
