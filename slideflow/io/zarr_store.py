"""zarr feature bags (TIAToolbox style), one store (a folder) per slide, zarr format 3.

    <slide>.zarr/
        probabilities float32 (N, D)   chunks (min(N, 512), D)   (TIAToolbox's name)
        coordinates   int64   (N, 4)   [x0, y0, x1, y1] level-0 boxes, x1 = x0 + patch_size_level0
        zarr.json     group attrs: geometry (patch_size_level0, ...), coord_space = "level0",
                      box_format = "x0,y0,x1,y1", slideflow_meta = {...}

TIAToolbox's DeepFeatureExtractor (2.x, zarr >= 3) writes `coordinates` as (N, 4) boxes and
names its feature array `probabilities`, so we write that name (TIAToolbox code reads our
stores as its own) and read `features` too (stores written by earlier slideflow versions).
TIAToolbox's boxes are at the inference resolution of its ioconfig, not level 0, and a foreign
store does not say which: without our `coord_space = "level0"` attribute, `read_zarr` needs
`coords_scale=` (level-0 px per stored px, = inference µm/px / slide µm/px) and refuses
otherwise, rather than misplace every tile.

The store is built under `<slide>.zarr.tmp-*/` and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from .atomic import tmp_prefix, umask
from .base import (
    CHUNK_ROWS,
    Bag,
    ChunkedSink,
    as_coords,
    as_features,
    geometry_attrs,
    parse_geometry,
    to_json,
)

FEATURE_KEYS = ("probabilities", "features")  # TIAToolbox's (written), earlier slideflow


def _tmp_dir_for(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(dest.name), dir=dest.parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished store onto `dest`; an existing store is swapped out, then removed.

    rename(2) cannot replace a non-empty folder, so the old store is first renamed to a
    temporary name: between the two renames `dest` is briefly absent, never half-written.
    """
    old = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=tmp_prefix(dest.name) + "old-", dir=dest.parent))
        old.rmdir()
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


class ZarrSink(ChunkedSink):
    """Streams rows into a temporary zarr store one chunk at a time; `close()` renames it."""

    def __init__(self, path: Path, num_features: int, patch_size_level0: int,
                 meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None, *,
                 chunk_rows: int = CHUNK_ROWS):
        super().__init__(num_features, chunk_rows)
        self.path = Path(path)
        self.size = int(patch_size_level0)
        self.meta = dict(meta or {})
        self.geometry = geometry_attrs(patch_size_level0, meta, attrs)
        self._tmp = _tmp_dir_for(self.path)
        self._group: Any = None

    def _open(self, chunk: int) -> None:
        import zarr

        self._group = zarr.open_group(str(self._tmp), mode="w", zarr_format=3)
        chunk = max(1, chunk)
        self._features = self._group.create_array(
            "probabilities", shape=(0, self.num_features), chunks=(chunk, self.num_features),
            dtype="float32")
        self._coords = self._group.create_array(
            "coordinates", shape=(0, 4), chunks=(chunk, 4), dtype="int64")

    def _write(self, f: np.ndarray, c: np.ndarray) -> None:
        if self._group is None:
            self._open(self.chunk_rows)
        self._features.append(f, axis=0)
        self._coords.append(np.concatenate([c, c + self.size], axis=1), axis=0)

    def close(self) -> Path:
        if self._group is None:  # fewer rows than one chunk: chunk = the whole bag
            self._open(max(self._fill, 1))
        self.flush_tail()
        self._group.attrs.update({  # metadata last
            **self.geometry,
            "name": self.path.name[: -len(".zarr")],
            "coord_space": "level0",
            "box_format": "x0,y0,x1,y1",
            "format_version": 1,
            "slideflow_meta": to_json(self.meta),
        })
        self._group = None
        replace_dir(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._group = None
        shutil.rmtree(self._tmp, ignore_errors=True)


def _open_group(path: Path) -> Any:
    import zarr

    if not path.is_dir():
        raise BagError(f"{path}: not a zarr store (a .zarr bag is a folder)")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as e:  # zarr raises its own errors, FileNotFoundError or JSON errors
        raise BagError(f"{path}: not a readable zarr bag ({type(e).__name__}: {e})") from e


def read_zarr(path: str | os.PathLike, coords_scale: float | None = None) -> Bag:
    """Read a zarr bag (ours or TIAToolbox's): boxes become top-left level-0 corners.

    A store without ``coord_space = "level0"`` (TIAToolbox's) has coordinates at its model's
    resolution: `coords_scale` (level-0 px per stored px) converts them; None refuses.
    """
    path = Path(path)
    group = _open_group(path)
    try:
        key = next((k for k in FEATURE_KEYS if k in group), None)
        if key is None or "coordinates" not in group:
            raise BagError(f"{path}: needs `probabilities` (or `features`) and `coordinates`")
        features = as_features(group[key][...])
        boxes = np.asarray(group["coordinates"][...])
        attrs = dict(group.attrs)
    except BagError:
        raise
    except Exception as e:  # missing/corrupt chunks, bad metadata
        raise BagError(f"{path}: corrupt zarr bag ({type(e).__name__}: {e})") from e
    if features.ndim != 2 or boxes.ndim != 2 or boxes.shape[1] not in (2, 4) \
            or len(boxes) != len(features):
        raise BagError(f"{path}: {key} {features.shape} and coordinates {boxes.shape} "
                       "do not match")
    if attrs.get("coord_space") != "level0":
        boxes = _foreign_to_level0(path, boxes, coords_scale)
        attrs.pop("patch_size_level0", None)
        attrs["coord_space"] = "level0"
    elif coords_scale not in (None, 1, 1.0):
        raise BagError(f"{path}: coordinates are already level-0 (coord_space attribute); "
                       "drop coords_scale=")
    if attrs.get("patch_size_level0") is None and boxes.shape[1] == 4 and len(boxes):
        sizes = np.unique(np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]))
        if len(sizes) == 1:
            attrs["patch_size_level0"] = int(sizes[0])
    out: dict[str, Any] = parse_geometry(attrs)
    out.update({k: attrs[k] for k in ("name", "coord_space") if k in attrs})
    out.update(meta=dict(attrs.get("slideflow_meta") or {}), format="zarr",
               coord_origin="top_left")
    try:
        coords = np.ascontiguousarray(as_coords(boxes[:, :2]))
    except ValueError as e:
        raise BagError(f"{path}: {e}") from None
    return Bag(features, coords, out, path)


def _foreign_to_level0(path: Path, boxes: np.ndarray, scale: float | None) -> np.ndarray:
    if scale is None:
        raise BagError(
            f"{path}: a zarr without slideflow's coord_space='level0' attribute (e.g. "
            "TIAToolbox's DeepFeatureExtractor output) stores coordinates at the model's "
            "inference resolution, which the file does not record. Pass coords_scale= (level-0 "
            "pixels per stored pixel, i.e. inference um/px divided by the slide's um/px; 1.0 if "
            "the model ran at level 0) to read_bag / convert.")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or \
            not np.isfinite(scale) or scale <= 0:
        raise BagError(f"{path}: coords_scale must be a finite number > 0, got {scale!r}")
    try:
        return as_coords(np.rint(boxes.astype(np.float64) * float(scale)))
    except ValueError as e:
        raise BagError(f"{path}: coords_scale={scale!r}: {e}") from None


def read_zarr_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The stored `meta` of a zarr bag, without reading its rows (None when absent)."""
    path = Path(path)
    if not path.exists():
        return None
    with contextlib.suppress(BagError):
        meta = _open_group(path).attrs.get("slideflow_meta")
        return dict(meta) if meta is not None else None
    return None


# -- the format table's interface (`io.formats`) ------------------------------------------------

def open_sink(path: Path, *, num_features: int, patch_size_level0: int,
              meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None,
              encoder: str | None, chunk_rows: int, expected_rows: int | None) -> ZarrSink:
    return ZarrSink(path, num_features, patch_size_level0, meta, attrs, chunk_rows=chunk_rows)


def read(path: Path, *, patch_size_level0: int | None, encoder: str | None,
         coords_scale: float | None) -> Bag:
    return read_zarr(path, coords_scale=coords_scale)


def read_meta(path: Path, encoder: str | None) -> dict[str, Any] | None:
    return read_zarr_meta(path)
