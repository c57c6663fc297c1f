"""The order in which tile loaders visit records: one seeded plan shared by every framework.

`epoch_plan` is what makes the PyTorch `TileDataset` and the TensorFlow `interleave` yield the
same tiles in the same order for the same seed: both read (file, record) pairs from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def epoch_plan(lengths: Sequence[int] | np.ndarray, *, seed: int = 0, epoch: int = 0,
               shuffle: bool = False, interleave: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """(file index, record index) of every record of one epoch, in visiting order.

    - interleave=True, shuffle=False: round-robin (record 0 of each file, then record 1, ...).
    - interleave=True, shuffle=True: a uniform random order over all records, seeded by
      (seed, epoch).
    - interleave=False: file after file (file order and record order shuffled if `shuffle`).
    """
    lengths = np.asarray(lengths, np.int64)
    rng = np.random.default_rng([int(seed), int(epoch)])
    files = np.repeat(np.arange(len(lengths)), lengths)
    recs = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) \
        else np.zeros(0, np.int64)
    if interleave:
        order = rng.permutation(len(files)) if shuffle else np.lexsort((files, recs))
        return files[order], recs[order]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    file_order = rng.permutation(len(lengths)) if shuffle else range(len(lengths))
    parts = [starts[f] + (rng.permutation(lengths[f]) if shuffle else np.arange(lengths[f]))
             for f in file_order]
    order = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return files[order], recs[order]


def shard_plan(files: np.ndarray, recs: np.ndarray, index: int, count: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Shard `index` of `count` of a plan: a disjoint stride, as DataLoader workers take."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got "
                         f"({index}, {count})")
    return files[index::count], recs[index::count]
