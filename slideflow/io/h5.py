"""HDF5 feature bags in the CLAM/TRIDENT layout (one file per slide), readable by their MIL code.

    /features            float32 (N, D)   chunks (min(N, 512), D), no compression
    /coords              int64   (N, 2)   TOP-LEFT corners, level-0 pixels
        attrs: patch_size, patch_size_level0, level0_magnification, target_magnification,
               overlap, level0_width, level0_height, name          (TRIDENT's names)
    /features attrs: name, encoder, slideflow_meta (JSON)

Multi-encoder files (AtlasPatch layout) keep one `coords` and a group `/features/<encoder>` of
datasets; a new encoder is merged into an existing file by writing a complete copy under a
temporary name and replacing the file (`add_h5_features`, or `BagWriter(..., encoder=)`).
Files are built in memory and written whole (`h5_common.MemoryH5`): HDF5 never meets a full
disk, which crashed the process.

TRIDENT writes its geometry attributes on the `coords` dataset (trident/IO.py `coords_to_h5`,
read back by `read_coords` from `f['coords'].attrs`), so we do the same. TRIDENT chunks one row
per chunk; we chunk by batches of rows, which reads the same and is far faster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from .atomic import tmp_path_for
from .base import (
    CHUNK_ROWS,
    GEOMETRY_KEYS,
    Bag,
    as_coords,
    as_features,
    dumps_meta,
    geometry_attrs,
    parse_geometry,
    slide_of,
)
from .h5_common import (
    MemoryH5,
    MemoryH5Sink,
    append_rows,
    check_claimed_size,
    create_rows,
    pick_encoder,
    py,
    write_attrs,
)

FORMAT_VERSION = 1


def _features_attrs(slide: str, encoder: str | None, meta: Mapping[str, Any]) -> dict[str, Any]:
    attrs = {"name": slide, "slideflow_meta": dumps_meta(meta)}
    enc = encoder or meta.get("extractor")
    if enc:
        attrs["encoder"] = str(enc)
    return attrs


def _layout(h5: Any, path: Path) -> str:
    """'single' (`/features` dataset), 'multi' (`/features/<encoder>`) or 'empty'."""
    import h5py

    obj = h5.get("features")
    if obj is None:
        return "empty"
    return "multi" if isinstance(obj, h5py.Group) else "single"


class H5Sink(MemoryH5Sink):
    """Rows go into an in-memory h5 one chunk at a time; `close()` writes it to `<slide>.h5`."""

    def __init__(self, path: Path, num_features: int, patch_size_level0: int,
                 meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None, *,
                 encoder: str | None = None, chunk_rows: int = CHUNK_ROWS):
        super().__init__(path, num_features, chunk_rows)
        self.encoder = encoder
        self.meta = dict(meta or {})
        self.geometry = geometry_attrs(patch_size_level0, meta, attrs)

    def _open(self, chunk: int) -> None:
        h5 = self._create_file()
        key = "features" if self.encoder is None else f"features/{self.encoder}"
        self._df = create_rows(h5, key, self.num_features, "float32", chunk)
        self._dc = create_rows(h5, "coords", 2, "int64", chunk)

    def _write(self, f: np.ndarray, c: np.ndarray) -> None:
        if self._h5 is None:
            self._open(self.chunk_rows)
        append_rows(self._df, f)
        append_rows(self._dc, c)

    def close(self) -> Path:
        if self._h5 is None:  # fewer rows than one chunk: chunk = the whole bag
            self._open(max(self._fill, 1))
        self.flush_tail()
        slide = slide_of(self.path)
        write_attrs(self._dc, {**self.geometry, "name": slide})
        write_attrs(self._df, _features_attrs(slide, self.encoder, self.meta))
        write_attrs(self._h5, {"format_version": FORMAT_VERSION, "coord_origin": "top_left",
                               "coord_space": "level0"})
        if self.encoder is not None and self.path.exists():
            self._merge_existing()
        return self._commit()

    def _merge_existing(self) -> None:
        """Carry the other encoders (and any other groups) of the existing file over."""
        with self._existing(f"encoder {self.encoder!r}") as old:
            if _layout(old, self.path) == "single":
                raise BagError(f"{self.path}: single-encoder layout (/features is a dataset); "
                               f"write encoder {self.encoder!r} to another file or folder")
            if "coords" in old and not np.array_equal(old["coords"][()], self._dc[()]):
                raise BagError(f"{self.path}: encoder {self.encoder!r} has other tiles than the "
                               "encoders already in the file; all must share `coords`")
            self._carry_features(old, {self.encoder})
            for name, obj in old.items():
                if name not in ("features", "coords"):
                    old.copy(obj, self._h5, name=name)


def add_h5_features(path: str | os.PathLike, encoder: str, features: Any,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Add (or replace) `/features/<encoder>` in an existing multi-encoder h5, atomically.

    The file is changed in memory and written back under a temporary name that replaces the
    original; readers never see a half-written file. Rows must match the file's `coords`.
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: not found; write the first encoder with write_bag(..., encoder=)")
    f = np.asarray(features, dtype=np.float32)
    mem = MemoryH5(path.read_bytes())  # changed in memory, written back in one go
    try:
        h5 = mem.file
        if _layout(h5, path) == "single":
            raise BagError(f"{path}: single-encoder layout (/features is a dataset); "
                           "cannot add a named encoder")
        n = h5["coords"].shape[0] if "coords" in h5 else None
        if f.ndim != 2 or f.shape[0] != n:
            raise BagError(f"{path}: features for {encoder!r} must be ({n}, D), got {f.shape}")
        group = h5.require_group("features")
        if encoder in group:
            del group[encoder]
        ds = create_rows(group, encoder, f.shape[1], "float32",
                         min(max(f.shape[0], 1), CHUNK_ROWS), n=f.shape[0])
        ds[...] = f
        write_attrs(ds, _features_attrs(slide_of(path), encoder, dict(meta or {})))
    except BaseException:
        mem.discard()
        raise
    return mem.commit(path)


def list_h5_encoders(path: str | os.PathLike) -> list[str]:
    """Encoder names of a multi-encoder h5 ([] for the single layout)."""
    import h5py

    with _open(Path(path)) as h5:
        return sorted(h5["features"]) if isinstance(h5.get("features"), h5py.Group) else []


def _open(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise BagError(f"{path}: not a readable HDF5 bag (truncated or corrupt? {e})") from e


def _features_dataset(h5: Any, path: Path, encoder: str | None) -> Any:
    import h5py

    obj = h5.get("features")
    if obj is None:
        raise BagError(f"{path}: no /features dataset")
    if isinstance(obj, h5py.Group):
        return obj[pick_encoder(obj, path, encoder)]
    if encoder is not None and py(obj.attrs.get("encoder", encoder)) != encoder:
        raise BagError(f"{path}: features are from {py(obj.attrs['encoder'])!r}, "
                       f"not {encoder!r}")
    return obj


def read_h5(path: str | os.PathLike, encoder: str | None = None) -> Bag:
    """Read a CLAM/TRIDENT/AtlasPatch-style h5 bag (ours or theirs)."""
    path = Path(path)
    with _open(path) as h5:
        try:
            ds = _features_dataset(h5, path, encoder)
            if "coords" not in h5:
                raise BagError(f"{path}: no /coords dataset")
            check_claimed_size(ds, path)
            check_claimed_size(h5["coords"], path)
            features = as_features(ds[()])
            coords = np.asarray(h5["coords"][()])
            attrs = {k: py(v) for k, v in h5["coords"].attrs.items()}
            fattrs = {k: py(v) for k, v in ds.attrs.items()}
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise BagError(f"{path}: corrupt h5 bag ({type(e).__name__}: {e})") from e
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] < 2 \
            or len(coords) != len(features):
        raise BagError(f"{path}: features {features.shape} and coords {coords.shape} "
                       "do not match")
    geometry = parse_geometry(attrs)  # TRIDENT writes unknown values as the string 'None'
    if "patch_size_level0" not in geometry:
        size0 = _clam_size_level0(attrs)
        if size0:
            geometry["patch_size_level0"] = size0
    attrs = {k: v for k, v in attrs.items() if k not in GEOMETRY_KEYS} | geometry
    meta_json = fattrs.pop("slideflow_meta", None)
    try:
        meta = json.loads(meta_json) if meta_json else {}
    except ValueError:
        meta = {}
    attrs.update({k: v for k, v in fattrs.items() if k in ("name", "encoder")})
    attrs.update(meta=meta, format="h5", coord_origin="top_left")
    try:
        coords = as_coords(coords[:, :2])
    except ValueError as e:
        raise BagError(f"{path}: {e}") from None
    return Bag(features, np.ascontiguousarray(coords), attrs, path)


def _clam_size_level0(attrs: Mapping[str, Any]) -> int | None:
    """CLAM's create_patches writes `patch_size` at `patch_level` and that level's `downsample`
    on `coords` (coordinates themselves are level-0): the level-0 extent is their product."""
    if "patch_level" not in attrs or "patch_size" not in attrs:
        return None
    try:
        down = np.asarray(attrs.get("downsample", 1.0), dtype=np.float64).ravel()
        size = float(attrs["patch_size"]) * float(down[0] if down.size else 1.0)
    except (TypeError, ValueError):
        return None
    return int(round(size)) if size > 0 else None


def read_h5_meta(path: str | os.PathLike, encoder: str | None = None) -> dict[str, Any] | None:
    """The stored `meta` of an h5 bag, without reading its rows (None when absent)."""
    path = Path(path)
    if not path.exists():
        return None
    with _open(path) as h5:
        try:
            raw = _features_dataset(h5, path, encoder).attrs.get("slideflow_meta")
        except BagError:
            return None
        return json.loads(py(raw)) if raw else None


# -- the format table's interface (`io.formats`) ------------------------------------------------

def open_sink(path: Path, *, num_features: int, patch_size_level0: int,
              meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None,
              encoder: str | None, chunk_rows: int, expected_rows: int | None) -> H5Sink:
    return H5Sink(path, num_features, patch_size_level0, meta, attrs, encoder=encoder,
                  chunk_rows=chunk_rows)


def read(path: Path, *, patch_size_level0: int | None, encoder: str | None,
         coords_scale: float | None) -> Bag:
    """A CLAM/TRIDENT h5 bag (`patch_size_level0` is applied by the caller when the file
    lacks one; `coords_scale` concerns foreign zarr files only)."""
    return read_h5(path, encoder=encoder)


def read_meta(path: Path, encoder: str | None) -> dict[str, Any] | None:
    """The meta of the file's features (the first encoder's, as `read_h5_meta` picks)."""
    return read_h5_meta(path)


def write_embedding(dest: Path, encoder: str, vec: np.ndarray, meta: Mapping[str, Any]) -> Path:
    """A slide embedding as `slide_features/<encoder>` (with its meta) of `dest`; other
    encoders' embeddings in the file are kept. The file is copied, changed and moved back."""
    import shutil

    import h5py

    tmp = tmp_path_for(dest)
    try:
        if dest.exists():
            shutil.copyfile(dest, tmp)
        with h5py.File(tmp, "a") as h5:
            group = h5.require_group("slide_features")
            if encoder in group:
                del group[encoder]
            ds = group.create_dataset(encoder, data=np.asarray(vec, np.float32).reshape(-1))
            ds.attrs["meta"] = dumps_meta(meta)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def read_embedding(path: Path, encoder: str | None) -> np.ndarray:
    """`slide_features/<encoder>` of an h5 (`encoder` may be left out when it holds one)."""
    import h5py

    with h5py.File(path, "r") as h5:
        group = h5["slide_features"]
        names = sorted(group)
        if encoder is None:
            if len(names) != 1:
                raise BagError(f"{path}: holds {names}; pass encoder=")
            encoder = names[0]
        return np.asarray(group[encoder][...])


def has_embedding(dest: Path, encoder: str) -> bool:
    if not dest.exists():
        return False
    import h5py

    with h5py.File(dest, "r") as h5:
        return encoder in h5.get("slide_features", {})
