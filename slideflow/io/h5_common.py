"""HDF5 pieces shared by the CLAM/TRIDENT writer (`h5`) and the AtlasPatch writer
(`atlaspatch`): one way to write attributes, grow chunked datasets, pick an encoder's features,
and write a file under a temporary name that replaces the old one only when complete (fsync,
then `os.replace`), carrying the other encoders of an existing file over.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from .atomic import tmp_path_for
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


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempH5Sink(ChunkedSink):
    """A chunked sink writing `<path>.tmp-*` and moving it over `path` on `commit()`."""

    def __init__(self, path: Path, num_features: int, chunk_rows: int = CHUNK_ROWS):
        super().__init__(num_features, chunk_rows)
        self.path = Path(path)
        self._tmp = tmp_path_for(self.path)
        self._h5: Any = None

    def _create_file(self) -> Any:
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._h5 = h5py.File(self._tmp, "w")
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
        """Close, fsync and move the complete file into place (metadata already written)."""
        self._h5.close()
        self._h5 = None
        fsync(self._tmp)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
            self._h5 = None
        self._tmp.unlink(missing_ok=True)
