"""A huge, mostly empty single-level tiled TIFF, written in seconds (empty tiles take 0 bytes)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

TILE = 512


def write_sparse_tiff(path: Path, size: int = 60_000, tissue: tuple[int, int, int, int] = (
        20, 20, 26, 26), mpp: float = 0.25) -> Path:
    """`size` x `size` RGB, one level, 512-px uncompressed tiles; tiles in the `tissue` box
    (tile rows/cols r0, c0, r1, c1) hold pink noise, every other tile is empty (bytecount 0,
    which readers show as background)."""
    import tifffile

    n = -(-size // TILE)
    rng = np.random.default_rng(0)
    pink = np.empty((TILE, TILE, 3), np.uint8)
    r0, c0, r1, c1 = tissue

    def tiles():
        for r in range(n):
            for c in range(n):
                if r0 <= r < r1 and c0 <= c < c1:
                    pink[..., 0] = rng.integers(150, 230, (TILE, TILE))
                    pink[..., 1] = rng.integers(40, 120, (TILE, TILE))
                    pink[..., 2] = rng.integers(120, 200, (TILE, TILE))
                    yield pink
                elif r == c == 0:  # tifffile peeks at the first tile for its dtype
                    yield np.full((TILE, TILE, 3), 255, np.uint8)
                else:
                    yield None

    res = 1e4 / mpp  # pixels per cm
    tifffile.imwrite(path, data=tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE),
                     photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER",
                     bigtiff=True)
    return path


if __name__ == "__main__":
    write_sparse_tiff(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 60_000)
