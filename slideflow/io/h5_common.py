"""HDF5 pieces shared by the CLAM/TRIDENT writer (`h5`) and the AtlasPatch writer
(`atlaspatch`): one way to write attributes, grow chunked datasets, pick an encoder's features,
and write a file that replaces the old one only when complete, carrying the other encoders of an
existing file over.

Files are built in memory (`MemoryH5`) and written to disk whole when complete (temporary name,
fsync, `os.replace`). HDF5 cannot recover from a full disk: a failed flush leaves its file state
broken, h5py flushes again when the object is finalised, and the process crashed (exit 139) at
the next file it opened. In memory, HDF5 never meets the disk; the finished bytes go through
`atomic.stage`, whose errors are plain OSErrors (the slide fails, its temporary file is removed,
the run goes on). The cost is the memory of one bag while it is written, as for a `.pt`.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from .atomic import stage
from .base import CHUNK_ROWS, ChunkedSink


def write_attrs(obj: Any, attrs: Mapping[str, Any]) -> None:
    """Integers as int64, floats as float64, anything else (bool, None, text) as a string."""
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)) or value is None:
            obj.attrs[key] = str(value)
        elif isinstance(value, (int, np.integer)):
            obj.attrs[key] = np.int64(value)
        elif isinstance(value, (float, np.floating)):
            obj.attrs[key] = np.float64(value)
        else:
            obj.attrs[key] = str(value)


def py(value: Any) -> Any:
    """A Python value from an h5py attribute (bytes decoded, numpy scalars and arrays
    unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def create_rows(parent: Any, key: str, width: int, dtype: str, chunk: int, n: int = 0) -> Any:
    """A (n, width) dataset that grows along rows, chunked by `chunk` rows."""
    return parent.create_dataset(key, shape=(n, width), maxshape=(None, width), dtype=dtype,
                                 chunks=(max(1, chunk), width), track_times=False)


def append_rows(ds: Any, rows: np.ndarray) -> None:
    n0 = ds.shape[0]
    ds.resize(n0 + len(rows), axis=0)
    ds[n0:n0 + len(rows)] = rows


def pick_encoder(group: Any, path: Path, encoder: str | None) -> str:
    """The encoder to read from a `/features/<encoder>` group (the only one, or `encoder`)."""
    names = sorted(group)
    if encoder is None:
        if len(names) != 1:
            raise BagError(f"{path}: holds features of several encoders {names}; pass "
                           "encoder=")
        return names[0]
    if encoder not in names:
        raise BagError(f"{path}: no features for encoder {encoder!r} (has {names})")
    return encoder


class MemoryH5:
    """An h5py File built in a BytesIO; `commit(dest)` writes it atomically (see module doc).

    `initial` (the bytes of an existing file) opens that file for changes, else a new one.
    """

    def __init__(self, initial: bytes | None = None):
        import h5py

        self._buf: io.BytesIO | None = io.BytesIO(initial or b"")
        self.file: Any = h5py.File(self._buf, "w" if initial is None else "a")

    def commit(self, dest: Path) -> Path:
        """Close the file and move its bytes to `dest` (temporary file + os.replace)."""
        buf = self._buf
        self.file.close()  # in memory: nothing here can fail for lack of disk space
        try:
            tmp = stage(dest, lambda fh: fh.write(buf.getbuffer()))
        finally:
            self._buf = None
        os.replace(tmp, dest)
        return dest

    def discard(self) -> None:
        """Drop the file (nothing was written to disk)."""
        with contextlib.suppress(Exception):
            self.file.close()
        self._buf = None


class MemoryH5Sink(ChunkedSink):
    """A chunked sink building its h5 in memory and writing it over `path` on `_commit()`."""

    def __init__(self, path: Path, num_features: int, chunk_rows: int = CHUNK_ROWS):
        super().__init__(num_features, chunk_rows)
        self.path = Path(path)
        self._mem: MemoryH5 | None = None
        self._h5: Any = None

    def _create_file(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._mem = MemoryH5()
        self._h5 = self._mem.file
        return self._h5

    @contextlib.contextmanager
    def _existing(self, adding: Any) -> Iterator[Any]:
        """The file being replaced, open for reading (to carry its other encoders over)."""
        import h5py

        try:
            old = h5py.File(self.path, "r")
        except OSError as e:
            raise BagError(f"{self.path}: existing file unreadable, cannot add {adding} "
                           f"({e})") from e
        with old:
            yield old

    def _carry_features(self, old: Any, ours: set[str]) -> None:
        """Copy `/features/<encoder>` of the old file for every encoder not written now."""
        for name, ds in (old.get("features") or {}).items():
            if name not in ours:
                old.copy(ds, self._h5["features"], name=name)

    def _commit(self) -> Path:
        """Write the complete file into place (metadata already written)."""
        mem, self._mem, self._h5 = self._mem, None, None
        return mem.commit(self.path)

    def abort(self) -> None:
        if self._mem is not None:
            self._mem.discard()
        self._mem = self._h5 = None


#: how much larger than its file a compressed dataset may claim to be when read
MAX_COMPRESSION_RATIO = 1000


def check_claimed_size(ds: Any, path: Path) -> None:
    """Refuse a dataset whose shape claims more bytes than its file can hold (a header saying
    (1e9, 1024) raised a bare MemoryError): uncompressed data must fit in the file,
    compressed data within MAX_COMPRESSION_RATIO of it."""
    claimed = int(np.prod(ds.shape, dtype=np.float64)) * ds.dtype.itemsize
    size = os.path.getsize(path)
    limit = size if ds.compression is None else size * MAX_COMPRESSION_RATIO
    if claimed > limit + (1 << 16):
        raise BagError(f"{path}: dataset {ds.name} claims shape {tuple(ds.shape)} "
                       f"({claimed / 2**30:.3g} GiB) but the file holds {size:,} bytes "
                       "(corrupt or truncated h5)")
