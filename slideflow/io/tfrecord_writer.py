"""Writing TFRecords: atomically (temporary name, renamed when complete), index written last."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TFRecordError
from . import protobuf
from .atomic import AtomicWriter, close_quietly, discard, tmp_path_for
from .npz import index_path_for
from .tfrecord_codec import FRAMING, U32, masked_crc
from .tfrecord_index import TFRecordIndex, stage_index


class TFRecordWriter(AtomicWriter):
    """Write tiles to `<slide>.tfrecords` under a temporary name; renamed on a clean close.

    Use as a context manager: on an exception the temporary file is removed and any existing
    file at `path` is left untouched. The index is written after the rename.
    """

    def __init__(self, path: str | os.PathLike, *, write_index: bool = True):
        self.path = Path(path)
        self.with_index = write_index
        self._tmp = tmp_path_for(self.path)
        self._fh = open(self._tmp, "wb", buffering=1 << 20)  # closed in close()/abort()
        self._offsets: list[tuple[int, int]] = []
        self._locs: list[tuple[int, int]] = []
        self._has_locs = True
        self._pos = 0
        self._done = False

    def __len__(self) -> int:
        return len(self._offsets)

    def write(self, image_bytes: bytes, slide: str, loc_x: int, loc_y: int, *,
              extra: Mapping[str, protobuf.FeatureLike] | None = None) -> None:
        """Append one tile: encoded image bytes, slide name, tile centre (level-0 px)."""
        if not isinstance(image_bytes, (bytes, bytearray, memoryview)):
            raise TypeError(f"image_bytes must be bytes (encode tiles with imgcodec.encode), "
                            f"got {type(image_bytes).__name__}")
        features: dict[str, Any] = {"image_raw": image_bytes, "slide": str(slide),
                                    "loc_x": int(loc_x), "loc_y": int(loc_y)}
        if extra:
            clash = set(extra) & set(features)
            if clash:
                raise ValueError(f"extra features may not replace {sorted(clash)}")
            features.update(extra)
        self.write_example(protobuf.encode_example(features), (int(loc_x), int(loc_y)))

    def write_example(self, example: bytes, location: tuple[int, int] | None = None) -> None:
        """Append an already serialized tf.train.Example (`location` goes to the index)."""
        if self._done:
            raise TFRecordError(f"{self.path}: writer is closed")
        length = struct.pack("<Q", len(example))
        self._fh.write(length + U32.pack(masked_crc(length)))
        self._fh.write(example)  # not concatenated: saves a copy of the image bytes
        self._fh.write(U32.pack(masked_crc(example)))
        size = FRAMING + len(example)
        self._offsets.append((self._pos, size))
        self._pos += size
        if location is None:
            self._has_locs = False
        else:
            self._locs.append((int(location[0]), int(location[1])))

    @property
    def index(self) -> TFRecordIndex:
        return TFRecordIndex(np.array(self._offsets, np.int64).reshape(-1, 2),
                             np.array(self._locs, np.int64).reshape(-1, 2)
                             if self._has_locs else None)

    def close(self) -> None:
        """Finish: fsync, stage the index, drop the old index, rename both into place.

        Everything that can fail on a full disk happens before anything is replaced; on such
        a failure the temporary files are removed and an existing file at `path` is untouched.
        """
        if self._done:
            return
        index_tmp = None
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            if self.with_index:
                index_tmp = stage_index(self.path, self.index)
        except BaseException:
            self.abort()
            raise
        self._done = True
        index = index_path_for(self.path)
        try:
            index.unlink(missing_ok=True)  # it describes the file we replace
            os.replace(self._tmp, self.path)
            if index_tmp is not None:
                os.replace(index_tmp, index)
        except BaseException:
            discard(self._tmp)
            discard(index_tmp)
            raise

    def abort(self) -> None:
        """Discard everything written; an existing file at `path` is not touched."""
        if self._done:
            return
        self._done = True
        close_quietly(self._fh)  # its flush fails again on a full disk
        discard(self._tmp)

    @property
    def finished(self) -> bool:
        return self._done


def write_records(path: str | os.PathLike, records: Iterable[Any], *,
                  write_index: bool = True) -> int:
    """Write (image_bytes, slide, loc_x, loc_y) tuples or dicts with those keys (dict keys
    beyond them are stored as extra features); returns the number of records."""
    with TFRecordWriter(path, write_index=write_index) as writer:
        for rec in records:
            if isinstance(rec, Mapping):
                extra = {k: v for k, v in rec.items()
                         if k not in ("image_raw", "slide", "loc_x", "loc_y")}
                writer.write(rec["image_raw"], rec["slide"], rec["loc_x"], rec["loc_y"],
                             extra=extra or None)
            else:
                writer.write(*rec)
        return len(writer)
