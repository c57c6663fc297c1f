"""AtlasPatch HDF5 bags: `<out>/patches/<stem>.h5`, readable by AtlasPatch's documented reader.

    /coords              int32   (N, 5)   x, y, read_w, read_h, level  (x, y: level-0 top-left)
    /features/<encoder>  float32 (N, D)   one dataset per extractor, row-aligned with coords
    file attrs: patch_size, patch_size_level0, level0_magnification, target_magnification,
                overlap, level0_width, level0_height, wsi_path, num_patches (AtlasPatch's names)
    /features/<encoder> attrs: embedding_dim, encoder, name, slideflow_meta (JSON, ours)

Facts from AtlasPatch's README ("Using Extracted Data") and its writer
(atlas_patch/services/storage.py `H5PatchWriter`): `read_w`, `read_h` and `level` say how the
patch was read (`openslide.read_region((x, y), level, (read_w, read_h))`, then resized to
`patch_size` when the sizes differ). Tiles from a TFRecord (read level unknown) are described as
a level-0 read of `patch_size_level0` pixels, which covers the same area.

Several extractors go into one file: in one pass (`BagWriter(..., encoders=[...])` with the
columns of each side by side), or one after another (a later run with the same tiles merges its
encoder into the existing file; other tiles are refused). The file is built in memory
(`h5_common.MemoryH5`: HDF5 never meets a full disk), written under a temporary name and
replaces the old one only when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from .base import (
    CHUNK_ROWS,
    Bag,
    as_coords,
    as_features,
    dumps_meta,
    geometry_attrs,
    parse_geometry,
)
from .h5_common import (
    MemoryH5Sink,
    append_rows,
    check_claimed_size,
    create_rows,
    pick_encoder,
    py,
    write_attrs,
)


class AtlasPatchSink(MemoryH5Sink):
    """Rows for `<out>/patches/<slide>.h5`, built in memory and written on `close()`.

    `encoders` is a list of (name, dim): the incoming feature columns are split in that order,
    one `/features/<name>` dataset each.
    """

    def __init__(self, path: Path, encoders: Sequence[tuple[str, int]], patch_size_level0: int,
                 meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None, *,
                 chunk_rows: int = CHUNK_ROWS):
        super().__init__(path, sum(int(d) for _, d in encoders), chunk_rows)
        names = [n for n, _ in encoders]
        if not names or len(set(names)) != len(names) or any("/" in n or not n for n in names):
            raise BagError(f"{path}: encoder names must be unique, non-empty, without '/': "
                           f"{names}")
        self.encoders = [(str(n), int(d)) for n, d in encoders]
        self.size = int(patch_size_level0)
        self.meta = dict(meta or {})
        self.geometry = geometry_attrs(patch_size_level0, meta, attrs)
        level = self.meta.get("level")
        read_px = self.meta.get("read_px")
        if level is None or not read_px:  # TFRecord tiles: describe a level-0 read
            level, read_px = 0, self.size
        self.level, self.read_px = int(level), int(read_px)

    def _open(self, chunk: int) -> None:
        h5 = self._create_file()
        self._dc = create_rows(h5, "coords", 5, "int32", chunk)
        group = h5.create_group("features", track_order=True)
        self._df = [create_rows(group, n, d, "float32", chunk) for n, d in self.encoders]

    def _write(self, f: np.ndarray, c: np.ndarray) -> None:
        if self._h5 is None:
            self._open(self.chunk_rows)
        if c.size and (c.min() < 0 or c.max() > np.iinfo(np.int32).max):
            raise BagError(f"{self.path}: coordinates do not fit AtlasPatch's int32 coords")
        rows = np.empty((len(f), 5), np.int32)
        rows[:, :2] = c
        rows[:, 2:4] = self.read_px
        rows[:, 4] = self.level
        append_rows(self._dc, rows)
        col = 0
        for ds, (_, d) in zip(self._df, self.encoders):
            append_rows(ds, f[:, col:col + d])
            col += d

    def close(self) -> Path:
        if self._h5 is None:
            self._open(max(self._fill, 1))
        self.flush_tail()
        write_attrs(self._h5, {**self.geometry, "wsi_path": self.meta.get("slide_path", ""),
                               "num_patches": int(self._dc.shape[0]),
                               "coord_space": "level0"})
        for ds, (name, d) in zip(self._df, self.encoders):
            ds.attrs["embedding_dim"] = np.int64(d)
            ds.attrs["encoder"] = name
            ds.attrs["name"] = self.path.stem
            ds.attrs["slideflow_meta"] = dumps_meta({**self.meta, "extractor": name})
        if self.path.exists():
            self._merge_existing()
        return self._commit()  # metadata written above, file moved last

    def _merge_existing(self) -> None:
        """Carry the other encoders of the existing file over (same tiles required)."""
        with self._existing(f"encoders {[n for n, _ in self.encoders]}") as old:
            prev = old.get("coords")
            if prev is None or prev.shape != self._dc.shape or not np.array_equal(
                    prev[:, :2], self._dc[:, :2]):
                raise BagError(f"{self.path}: the file holds other tiles than this run; every "
                               "extractor of an AtlasPatch file shares one `coords` (write to "
                               "another folder, or use the same tile selection)")
            self._carry_features(old, {n for n, _ in self.encoders})


def is_atlaspatch_file(path: str | os.PathLike) -> bool:
    """Whether an .h5 file has AtlasPatch's layout (False when unreadable: the h5 reader then
    reports the problem)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return is_atlaspatch(h5)
    except OSError:
        return False


def is_atlaspatch(h5: Any) -> bool:
    """An h5 in AtlasPatch's layout: (N, 5) coords and a `features` group."""
    import h5py

    coords = h5.get("coords")
    return coords is not None and coords.ndim == 2 and coords.shape[1] == 5 and isinstance(
        h5.get("features"), h5py.Group)


def read_atlaspatch(path: str | os.PathLike, encoder: str | None = None) -> Bag:
    """Read one encoder of an AtlasPatch h5 (ours or AtlasPatch's)."""
    import h5py

    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        raise BagError(f"{path}: not a readable HDF5 file ({e})") from e
    with h5:
        if not is_atlaspatch(h5):
            raise BagError(f"{path}: not an AtlasPatch h5 (needs (N, 5) `coords` and a "
                           "`features/` group)")
        encoder = pick_encoder(h5["features"], path, encoder)
        ds = h5["features"][encoder]
        check_claimed_size(ds, path)
        check_claimed_size(h5["coords"], path)
        try:
            features = as_features(ds[()])
        except ValueError as e:
            raise BagError(f"{path}: features/{encoder}: {e}") from None
        coords = np.asarray(h5["coords"][()])
        fattrs = {k: py(v) for k, v in h5.attrs.items()}
        dattrs = {k: py(v) for k, v in ds.attrs.items()}
    if len(features) != len(coords) or features.ndim != 2:
        raise BagError(f"{path}: features/{encoder} {features.shape} and coords "
                       f"{coords.shape} do not match")
    attrs: dict[str, Any] = parse_geometry(fattrs)
    if not attrs.get("patch_size_level0") and len(coords):
        level_zero = coords[:, 4] == 0
        sizes = np.unique(coords[level_zero, 2:4]) if level_zero.any() else []
        if len(sizes) == 1:
            attrs["patch_size_level0"] = int(sizes[0])
    try:
        meta = json.loads(dattrs.get("slideflow_meta") or "{}")
    except ValueError:
        meta = {}
    attrs.update(meta=meta, format="atlaspatch", coord_origin="top_left", encoder=encoder,
                 name=path.stem, wsi_path=fattrs.get("wsi_path"),
                 read=np.ascontiguousarray(coords[:, 2:5]))
    try:
        top_left = as_coords(coords[:, :2])
    except ValueError as e:
        raise BagError(f"{path}: {e}") from None
    return Bag(features, np.ascontiguousarray(top_left), attrs, path)


def read_atlaspatch_meta(path: str | os.PathLike, encoder: str) -> dict[str, Any] | None:
    """The stored `meta` of one encoder, without reading rows (None when absent)."""
    import h5py

    path = Path(path)
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as h5:
            ds = (h5.get("features") or {}).get(encoder) if is_atlaspatch(h5) else None
            raw = ds.attrs.get("slideflow_meta") if ds is not None else None
            return json.loads(py(raw)) if raw else None
    except (OSError, ValueError):
        return None


def list_encoders(path: str | os.PathLike) -> list[str]:
    import h5py

    with h5py.File(path, "r") as h5:
        return sorted(h5["features"]) if is_atlaspatch(h5) else []



# -- the format table's interface (`io.formats`) ------------------------------------------------

def open_sink(path: Path, *, num_features: int, patch_size_level0: int,
              meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None,
              encoder: str | None, chunk_rows: int, expected_rows: int | None) -> AtlasPatchSink:
    """The sink of one extractor's features, stored as `features/<encoder>` (default: the
    meta's extractor name)."""
    name = encoder or (meta or {}).get("extractor") or "features"
    return AtlasPatchSink(path, [(str(name), int(num_features))], patch_size_level0, meta,
                          attrs, chunk_rows=chunk_rows)


def recognises(path: str | os.PathLike) -> bool:
    """Whether an .h5 file has AtlasPatch's layout (read as AtlasPatch, not CLAM/TRIDENT)."""
    return is_atlaspatch_file(path)


def read(path: Path, *, patch_size_level0: int | None, encoder: str | None,
         coords_scale: float | None) -> Bag:
    return read_atlaspatch(path, encoder)


def read_meta(path: Path, encoder: str | None) -> dict[str, Any] | None:
    """The meta of one encoder (default 'features') of an AtlasPatch file."""
    return read_atlaspatch_meta(path, encoder or "features")
