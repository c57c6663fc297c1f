"""TFRecord index files (`<slide>.index.npz`, Slideflow's layout) and index rebuilding.

    index   = npz (stored, not compressed): arr_0 = int64 (N, 2) [record start, record length
              including the 16 framing bytes], locations = int64 (N, 2) (loc_x, loc_y)

A missing, stale or unreadable index is rebuilt by scanning the file (checksums verified).
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import TFRecordError
from .atomic import stage
from .npz import index_path_for, save_npz
from .tfrecord_codec import FRAMING, parse_example, scan_records

log = logging.getLogger("slideflow.io.tfrecord")


class TFRecordIndex(NamedTuple):
    """Where each record is: `offsets` int64 (N, 2) [start, length incl. framing] and the tile
    centres `locations` int64 (N, 2), None when the records carry no loc_x/loc_y."""

    offsets: np.ndarray
    locations: np.ndarray | None

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.offsets.shape[0])


def stage_index(path: str | os.PathLike, index: TFRecordIndex) -> Path:
    """The index of the TFRecord at `path` written to a temporary file beside it (not moved)."""
    arrays = {"arr_0": np.asarray(index.offsets, np.int64).reshape(-1, 2)}
    if index.locations is not None:
        arrays["locations"] = np.asarray(index.locations, np.int64).reshape(-1, 2)
    return stage(index_path_for(path), lambda fh: save_npz(fh, arrays))


def write_index(path: str | os.PathLike, index: TFRecordIndex) -> Path:
    """Write the index of the TFRecord at `path` atomically; returns the index path."""
    dest = index_path_for(path)
    os.replace(stage_index(path, index), dest)
    return dest


def read_index(path: str | os.PathLike) -> TFRecordIndex:
    """Load the index of a TFRecord (pass the .tfrecords or the .index.npz path).

    Raises FileNotFoundError when there is none and TFRecordError when it is unreadable.
    """
    ipath = Path(path) if str(path).endswith(".npz") else index_path_for(path)
    if not ipath.exists():
        raise FileNotFoundError(f"{ipath}: no TFRecord index")
    try:
        with np.load(ipath, allow_pickle=False) as z:
            offsets = np.asarray(z["arr_0"])
            locations = np.asarray(z["locations"]) if "locations" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise TFRecordError(f"{ipath}: unreadable TFRecord index ({e})") from None
    if offsets.size == 0:  # Slideflow writes empty lists for empty TFRecords
        offsets = offsets.reshape(0, 2)
        locations = None if locations is None else locations.reshape(0, 2)
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise TFRecordError(f"{ipath}: arr_0 has shape {offsets.shape}, expected (N, 2)")
    if locations is not None and locations.shape != offsets.shape:
        raise TFRecordError(f"{ipath}: locations has shape {locations.shape}, "
                            f"expected {offsets.shape}")
    return TFRecordIndex(offsets.astype(np.int64, copy=False),
                         None if locations is None else locations.astype(np.int64, copy=False))


def index_matches(path: Path, index: TFRecordIndex, fd: int) -> bool:
    """Cheap staleness check: records tile the file exactly and the end headers agree."""
    size = os.fstat(fd).st_size
    off = index.offsets
    if len(off) == 0:
        return size == 0
    starts, lengths = off[:, 0], off[:, 1]
    if starts[0] != 0 or (lengths < FRAMING).any() or starts[-1] + lengths[-1] != size:
        return False
    if not np.array_equal(starts[1:], starts[:-1] + lengths[:-1]):
        return False
    for i in {0, len(off) - 1}:
        head = os.pread(fd, 8, int(starts[i]))
        if len(head) != 8 or struct.unpack("<Q", head)[0] != lengths[i] - FRAMING:
            return False
    return True


def build_index(path: str | os.PathLike, *, write: bool = True) -> TFRecordIndex:
    """Scan a TFRecord (checksums verified) and (re)write its index atomically.

    A folder that cannot be written (read-only share) only costs a warning: the index is
    still returned.
    """
    path = Path(path)
    offsets, locs, has_locs = [], [], True
    for i, offset, length, data in scan_records(path):
        offsets.append((offset, length))
        if has_locs:
            rec = parse_example(data, path, i, offset)
            if isinstance(rec.get("loc_x"), int) and isinstance(rec.get("loc_y"), int):
                locs.append((rec["loc_x"], rec["loc_y"]))
            else:
                has_locs = False
    index = TFRecordIndex(np.array(offsets, np.int64).reshape(-1, 2),
                          np.array(locs, np.int64).reshape(-1, 2) if has_locs else None)
    if write:
        try:
            write_index(path, index)
        except OSError as e:
            log.warning("%s: cannot write the rebuilt index (%s); using it in memory",
                        index_path_for(path), e)
    return index


def verify(path: str | os.PathLike) -> int:
    """Check every checksum and record of a TFRecord; returns the record count."""
    n = 0
    for i, offset, _, data in scan_records(Path(path)):
        parse_example(data, path, i, offset)
        n += 1
    return n
