"""PyTorch datasets over TFRecord tile stores (the only slideflow.io module that imports torch).

Both datasets yield `(image, label, slide, loc)`:
  image  uint8 tensor (H, W, 3), or whatever `transform(image)` returns
  label  `labels[slide]`, or -1 when no labels are given (default_collate cannot batch None)
  slide  the slide name = TFRecord file name without `.tfrecords` (how labels are keyed)
  loc    int64 tensor (2,): the tile centre (loc_x, loc_y) in level-0 px

`TileDataset` streams an epoch, interleaving slides, with every record seen exactly once per
epoch whatever `num_workers` is (workers take disjoint strides of one seeded epoch plan).
`TileMapDataset` gives global random access for samplers. Indexes are loaded (and rebuilt if
missing) once, in the process that builds the dataset, so workers never race to write them.
Random access verifies record checksums.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..errors import DatasetError
from . import imgcodec
from .plan import epoch_plan
from .tfrecord import TFRecord

Item = tuple[Any, Any, str, torch.Tensor]


class _Tiles:
    """TFRecords + labels, and how to turn (file, record) into an item."""

    def __init__(self, tfrecords: Sequence[str | os.PathLike], labels: Mapping[str, Any] | None,
                 transform: Callable[[torch.Tensor], Any] | None):
        if isinstance(tfrecords, (str, os.PathLike)):
            tfrecords = [tfrecords]
        self.records = [TFRecord(p, verify=True) for p in tfrecords]
        self.names = [r.name for r in self.records]
        self.lengths = np.array([len(r) for r in self.records], np.int64)
        if labels is not None:
            missing = sorted({n for n in self.names if n not in labels})
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise DatasetError(f"no label for {len(missing)} slide(s): {shown}; labels are "
                                   "keyed by TFRecord file name without '.tfrecords'")
        self.labels = labels
        self.transform = transform

    def item(self, f: int, k: int) -> Item:
        tfr = self.records[f]
        rec = tfr[int(k)]
        try:
            arr = imgcodec.decode(rec["image_raw"])
        except (KeyError, ValueError):
            arr = tfr.image(int(k))  # raises TFRecordError naming file, record and offset
        image: Any = torch.from_numpy(arr)
        if self.transform is not None:
            image = self.transform(image)
        name = self.names[f]
        label = -1 if self.labels is None else self.labels[name]
        loc = torch.tensor([rec.get("loc_x", 0), rec.get("loc_y", 0)], dtype=torch.int64)
        return image, label, name, loc


class TileDataset(IterableDataset):
    """Stream tiles from many TFRecords, interleaved across slides.

    - interleave=True, shuffle=False: round-robin (record 0 of each slide, then record 1, ...).
    - interleave=True, shuffle=True: a seeded uniform random order over all records.
    - interleave=False: slide after slide (slide order and record order shuffled if `shuffle`).
    Call `set_epoch(e)` between epochs to get a new (still reproducible) shuffle; with
    `persistent_workers=True` the workers keep the epoch they started with.
    """

    def __init__(self, tfrecords: Sequence[str | os.PathLike],
                 labels: Mapping[str, Any] | None = None, *, shuffle: bool = False,
                 seed: int = 0, transform: Callable[[torch.Tensor], Any] | None = None,
                 interleave: bool = True):
        super().__init__()
        self._tiles = _Tiles(tfrecords, labels, transform)
        self.shuffle = shuffle
        self.seed = seed
        self.interleave = interleave
        self.epoch = 0

    def __len__(self) -> int:
        return int(self._tiles.lengths.sum())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(file index, record index) of every record, in this epoch's order."""
        return epoch_plan(self._tiles.lengths, seed=self.seed, epoch=self.epoch,
                          shuffle=self.shuffle, interleave=self.interleave)

    def __iter__(self):
        files, recs = self.plan()
        info = get_worker_info()
        if info is not None:  # disjoint strides: each record goes to exactly one worker
            files, recs = files[info.id::info.num_workers], recs[info.id::info.num_workers]
        for f, k in zip(files.tolist(), recs.tolist()):
            yield self._tiles.item(f, k)


class TileMapDataset(Dataset):
    """Global random access over many TFRecords: item i is record i of their concatenation."""

    def __init__(self, tfrecords: Sequence[str | os.PathLike],
                 labels: Mapping[str, Any] | None = None, *,
                 transform: Callable[[torch.Tensor], Any] | None = None):
        self._tiles = _Tiles(tfrecords, labels, transform)
        self._ends = np.cumsum(self._tiles.lengths)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(file index, record index) of global item i."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"item {i} out of range ({n} tiles)")
        i = int(i) % n
        f = int(np.searchsorted(self._ends, i, side="right"))
        return f, i - (int(self._ends[f - 1]) if f else 0)

    def __getitem__(self, i: int) -> Item:
        return self._tiles.item(*self.locate(i))
