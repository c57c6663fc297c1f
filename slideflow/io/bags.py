"""Feature bags: one (N, D) float32 matrix of tile features per slide, with tile coordinates.

The dispatcher over the three on-disk formats, chosen by suffix (layouts in docs/outputs.md):

    <slide>.pt + <slide>.index.npz   Slideflow: torch tensor; index `arr_0` = tile CENTRES  (pt.py)
    <slide>.h5                       CLAM/TRIDENT: `features`, `coords` (top-left) + attrs  (h5.py)
    <slide>.zarr/                    TIAToolbox style: `features`, `coordinates` (x0, y0, x1, y1)
                                                                                    (zarr_store.py)

In memory, coordinates are always int64 TOP-LEFT corners in level-0 pixels (types and geometry
attributes in base.py); each format's convention is applied only when a file is written or read.

Writes are atomic: rows go to a temporary name that becomes the bag only once complete
(`os.replace`), metadata last; a crash leaves at worst a `*.tmp-*` leftover, never a file that
looks finished. torch, h5py and zarr are imported only when a bag of that format is touched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import BagError
from .atomic import AtomicWriter
from .bags_config import CONFIG_NAME, check_compatible, read_bags_config, write_bags_config
from .base import (
    BAG_SUFFIXES,
    CHUNK_ROWS,
    FORMATS,
    GEOMETRY_KEYS,
    Bag,
    bag_format,
    bag_path,
    check_rows,
    geometry_attrs,
    is_bag_folder,
    list_bags,
    parse_geometry,
    slide_of,
)
from .h5 import H5Sink, read_h5, read_h5_meta
from .npz import INDEX_SUFFIX, index_path_for
from .pt import PtSink, read_pt, read_pt_meta
from .zarr_store import ZarrSink, read_zarr, read_zarr_meta


class BagWriter(AtomicWriter):
    """Streaming sink for one slide's bag; becomes visible only on `close()`.

    `append(features (B, D) float32, coords (B, 2) int64 top-left)` any number of times, then
    `close()`. `abort()` (or an exception inside `with BagWriter(...)`) removes the temporary
    output. `meta` is stored in the bag (h5/zarr attrs, the .pt index) and read back by
    `read_bag_meta`; `attrs` overrides geometry attributes. `encoder` (h5 only) stores the
    features under `features/<encoder>` (AtlasPatch layout), merged into an existing file.
    """

    def __init__(self, outdir: str | os.PathLike, slide: str, fmt: str = "pt", *,
                 num_features: int, patch_size_level0: int,
                 meta: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None,
                 encoder: str | None = None, chunk_rows: int = CHUNK_ROWS,
                 expected_rows: int | None = None):
        self.fmt = bag_format("", fmt)
        self.slide = str(slide)
        self.path = bag_path(outdir, self.slide, self.fmt)
        self.num_features = int(num_features)
        if patch_size_level0 is None or int(patch_size_level0) <= 0:
            raise BagError(f"{self.path}: patch_size_level0 (tile extent in level-0 px) "
                           "is required to store coordinates")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if encoder is not None and self.fmt != "h5":
            raise ValueError("encoder= (several encoders in one file) is an h5 option")
        if self.fmt == "pt":
            self._sink: Any = PtSink(self.path, num_features, patch_size_level0, meta, attrs,
                                     expected_rows)
        elif self.fmt == "h5":
            self._sink = H5Sink(self.path, num_features, patch_size_level0, meta, attrs,
                                encoder=encoder, chunk_rows=chunk_rows)
        else:
            self._sink = ZarrSink(self.path, num_features, patch_size_level0, meta, attrs,
                                  chunk_rows=chunk_rows)
        self.closed = False

    def __len__(self) -> int:
        return self._sink.rows

    def append(self, features: Any, coords: Any) -> None:
        if self.closed:
            raise BagError(f"{self.path}: writer already closed")
        f, c = check_rows(features, coords, self.num_features)
        if len(f):
            self._sink.append(f, c)

    def close(self) -> Path:
        """Commit: write the remaining rows and metadata, then move the bag into place."""
        if self.closed:
            return self.path
        try:
            path = self._sink.close()
        except BaseException:
            self.abort()
            raise
        self.closed = True
        return path

    def abort(self) -> None:
        """Drop everything written so far; an existing finished bag is left untouched."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._sink.abort()

    @property
    def finished(self) -> bool:
        return self.closed



# -- reading ------------------------------------------------------------------------------------

def read_bag(path: str | os.PathLike, *, patch_size_level0: int | None = None,
             encoder: str | None = None) -> Bag:
    """Read a bag of any format: float32 (N, D) features, int64 (N, 2) top-left coords.

    A .pt bag's centres are shifted back by patch_size_level0 // 2, with the size taken from (in
    order) the argument, its .index.npz, or the folder's bags_config.json provenance; bags made
    by Slideflow itself carry none, and are returned with `attrs['coord_origin'] == 'centre'`.
    `encoder` picks one `features/<encoder>` of a multi-encoder h5.
    """
    path = Path(path)
    fmt = bag_format(path)
    if not path.exists():
        raise BagError(f"{path}: bag not found")
    if fmt == "pt":
        return read_pt(path, patch_size_level0)
    if fmt == "h5":
        bag = read_h5(path, encoder=encoder)
    else:
        bag = read_zarr(path)
    if patch_size_level0 and not bag.patch_size_level0:
        bag.attrs["patch_size_level0"] = int(patch_size_level0)
    return bag


def read_bag_meta(outdir: str | os.PathLike, slide: str, fmt: str = "pt") -> dict[str, Any] | None:
    """The `meta` a BagWriter stored with a finished bag, or None (missing, old or corrupt)."""
    path = bag_path(outdir, slide, fmt)
    try:
        if bag_format("", fmt) == "pt":
            return read_pt_meta(path)
        if bag_format("", fmt) == "h5":
            return read_h5_meta(path)
        return read_zarr_meta(path)
    except (BagError, OSError, ValueError, KeyError):
        return None


def write_bag(path: str | os.PathLike, features: Any, coords: Any, fmt: str | None = None, *,
              patch_size_level0: int | None = None, meta: Mapping[str, Any] | None = None,
              encoder: str | None = None, **attrs: Any) -> Path:
    """Write a whole bag at once (atomically); coords are top-left. `attrs`: geometry overrides.

    `patch_size_level0` is required (as argument or in `attrs`): the .pt index stores centres,
    zarr stores boxes, and h5 readers need it.
    """
    path = Path(path)
    fmt = bag_format(path, fmt)
    size = patch_size_level0 or attrs.get("patch_size_level0")
    f, c = check_rows(features, coords)
    with BagWriter(path.parent, slide_of(path), fmt, num_features=f.shape[1],
                   patch_size_level0=size, meta=meta, attrs=attrs, encoder=encoder,
                   expected_rows=len(f), chunk_rows=min(max(len(f), 1), CHUNK_ROWS)) as w:
        w.append(f, c)
    return w.path


def _iter_sources(src: Path) -> Iterator[Path]:
    yield from (list_bags(src) if is_bag_folder(src) else [src])


def convert(src: str | os.PathLike, dst: str | os.PathLike, format: str | None = None, *,
            patch_size_level0: int | None = None, encoder: str | None = None) -> list[Path]:
    """Convert a bag, or every bag of a folder, between .pt(+index), .h5 and .zarr.

    Features, coordinates, geometry attributes and meta are carried over exactly. A folder's
    bags_config.json is copied last. Returns the written paths.
    """
    src, dst = Path(src), Path(dst)
    folder = is_bag_folder(src)
    if folder:
        if format is None:
            raise ValueError("converting a folder needs format= ('pt', 'h5' or 'zarr')")
        fmt, outdir, name = bag_format("", format), dst, None
    else:
        to_dir = is_bag_folder(dst) or dst.suffix.lower() not in BAG_SUFFIXES
        fmt = bag_format(dst, format) if not to_dir or format else None
        if fmt is None:
            raise ValueError(f"{dst}: give format= or a destination with a bag suffix")
        outdir, name = (dst, None) if to_dir else (dst.parent, slide_of(dst))
    sources = list(_iter_sources(src))
    names = [slide_of(p) for p in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BagError(f"{src}: slides {dupes} have bags in several formats; convert the "
                       "files one by one")
    written = []
    for path in sources:
        bag = read_bag(path, patch_size_level0=patch_size_level0, encoder=encoder)
        if bag.attrs.get("coord_origin") != "top_left" or not bag.patch_size_level0:
            raise BagError(f"{path}: tile size in level-0 px unknown, cannot convert "
                           "coordinates; pass patch_size_level0=")
        geometry = {k: bag.attrs[k] for k in GEOMETRY_KEYS if k in bag.attrs}
        out = write_bag(bag_path(outdir, name or slide_of(path), fmt), bag.features, bag.coords,
                        fmt, meta=bag.meta, encoder=encoder if fmt == "h5" else None, **geometry)
        written.append(out)
    if folder:
        cfg = read_bags_config(src, missing_ok=True)
        if cfg is not None and (dst / CONFIG_NAME).resolve() != (src / CONFIG_NAME).resolve():
            check_compatible(dst, cfg)
            write_bags_config(dst, cfg)
    return written


__all__ = ["Bag", "BagWriter", "CHUNK_ROWS", "FORMATS", "GEOMETRY_KEYS", "INDEX_SUFFIX",
           "bag_format", "bag_path", "convert", "geometry_attrs", "index_path_for", "list_bags",
           "parse_geometry", "read_bag", "read_bag_meta", "slide_of", "write_bag"]
