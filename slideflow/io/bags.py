"""Feature bags: one (N, D) float32 matrix of tile features per slide, with tile coordinates.

The dispatcher over the on-disk formats of the format table (`io.formats`), chosen by
suffix (layouts in docs/outputs.md):

    <slide>.pt + <slide>.index.npz   Slideflow: torch tensor; index `arr_0` = tile CENTRES  (pt.py)
    <slide>.h5                       CLAM/TRIDENT: `features`, `coords` (top-left) + attrs  (h5.py)
    patches/<slide>.h5               AtlasPatch: `coords` (N, 5), `features/<encoder>`
                                                                                (atlaspatch.py)
    <slide>.zarr/                    TIAToolbox: `probabilities`, `coordinates` (x0, y0, x1, y1)
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
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import BagError
from . import formats
from .atomic import TMP_MARK, AtomicWriter
from .bags_config import check_compatible, config_file, read_bags_config, write_bags_config
from .base import (
    ATLASPATCH_DIR,
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
from .locks import clean_stale_temps
from .names import check_output_name
from .npz import INDEX_SUFFIX, index_path_for


class BagWriter(AtomicWriter):
    """Streaming sink for one slide's bag; becomes visible only on `close()`.

    `append(features (B, D) float32, coords (B, 2) int64 top-left)` any number of times, then
    `close()`. `abort()` (or an exception inside `with BagWriter(...)`) removes the temporary
    output. `meta` is stored in the bag (h5/zarr attrs, the .pt index) and read back by
    `read_bag_meta`; `attrs` overrides geometry attributes. `encoder` (h5 and atlaspatch)
    stores the features under `features/<encoder>`, merged into an existing file with the same
    tiles; for 'atlaspatch' it defaults to ``meta['extractor']``.
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
        entry = formats.get(self.fmt)
        if encoder is not None and not entry.multi_encoder:
            multi = "/".join(f.name for f in formats.TABLE if f.multi_encoder)
            raise ValueError(f"encoder= (several encoders in one file) is an {multi} option")
        self._sink: Any = entry.impl.open_sink(
            self.path, num_features=num_features, patch_size_level0=patch_size_level0,
            meta=meta, attrs=attrs, encoder=encoder, chunk_rows=chunk_rows,
            expected_rows=expected_rows)
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
             encoder: str | None = None, coords_scale: float | None = None) -> Bag:
    """Read a bag of any format: float32 (N, D) features, int64 (N, 2) top-left coords.

    A .pt bag's centres are shifted back by patch_size_level0 // 2, with the size taken from (in
    order) the argument, its .index.npz, or the folder's bags_config.json provenance; bags made
    by Slideflow itself carry none, and are returned with `attrs['coord_origin'] == 'centre'`.
    `encoder` picks one `features/<encoder>` of a multi-encoder h5 (AtlasPatch or ours).
    `coords_scale` (level-0 pixels per stored coordinate unit) converts a foreign zarr whose
    boxes are at the model's inference resolution (TIAToolbox); without it such a file is
    refused rather than read as level-0.
    """
    path = Path(path)
    fmt = bag_format(path)
    if not path.exists():
        raise BagError(f"{path}: bag not found")
    bag = formats.layout_of(path, fmt).impl.read(
        path, patch_size_level0=patch_size_level0, encoder=encoder, coords_scale=coords_scale)
    if patch_size_level0 and not bag.patch_size_level0:
        bag.attrs["patch_size_level0"] = int(patch_size_level0)
    return bag


def read_bag_meta(outdir: str | os.PathLike, slide: str, fmt: str = "pt",
                  encoder: str | None = None) -> dict[str, Any] | None:
    """The `meta` a BagWriter stored with a finished bag, or None (missing, old or corrupt).
    An AtlasPatch file holds one `meta` per encoder: `encoder` names it."""
    path = bag_path(outdir, slide, fmt)
    try:
        return formats.get(bag_format("", fmt)).impl.read_meta(path, encoder)
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
    outdir = path.parent
    if fmt == "atlaspatch":
        if outdir.name != ATLASPATCH_DIR:
            raise BagError(f"{path}: AtlasPatch files live in <output>/{ATLASPATCH_DIR}/")
        outdir = outdir.parent
    with BagWriter(outdir, slide_of(path), fmt, num_features=f.shape[1],
                   patch_size_level0=size, meta=meta, attrs=attrs, encoder=encoder,
                   expected_rows=len(f), chunk_rows=min(max(len(f), 1), CHUNK_ROWS)) as w:
        w.append(f, c)
    return w.path


def _iter_sources(src: Path) -> Iterator[Path]:
    yield from (list_bags(src) if is_bag_folder(src) else [src])


def convert(src: str | os.PathLike, dst: str | os.PathLike, format: str | None = None, *,
            patch_size_level0: int | None = None, encoder: str | None = None,
            coords_scale: float | None = None) -> list[Path]:
    """Convert a bag, or every bag of a folder, between .pt(+index), CLAM/TRIDENT .h5,
    AtlasPatch h5 (`format='atlaspatch'`, `<dst>/patches/<slide>.h5`) and TIAToolbox .zarr.

    Features, coordinates, geometry attributes and meta are carried over exactly; a folder's
    bags_config.json is copied last (as `bags_config.<encoder>.json` for AtlasPatch). `encoder`
    picks one extractor of a multi-encoder file and names the AtlasPatch dataset;
    `coords_scale` converts a foreign zarr's coordinates to level 0 (see `read_bag`).
    Returns the written paths.
    """
    src, dst = Path(src), Path(dst)
    folder = is_bag_folder(src)
    if folder:
        if format is None:
            raise ValueError("converting a folder needs format= ('pt', 'h5', 'atlaspatch' or "
                             "'zarr')")
        fmt, outdir, name = bag_format("", format), dst, None
    else:
        to_dir = is_bag_folder(dst) or dst.suffix.lower() not in BAG_SUFFIXES
        fmt = bag_format(dst, format) if not to_dir or format else None
        if fmt is None:
            raise ValueError(f"{dst}: give format= or a destination with a bag suffix")
        outdir, name = (dst, None) if to_dir else (dst.parent, slide_of(dst))
    sources = list(_iter_sources(src))
    if folder:  # list_bags leaves hidden files out: say so rather than skip them silently
        hidden = sorted(p.name for p in src.iterdir() if p.name.startswith(".")
                        and p.suffix.lower() in BAG_SUFFIXES and TMP_MARK not in p.name)
        if hidden:
            raise BagError(f"{src}: {hidden} start with '.', so they name no slide and would be "
                           "skipped; rename them (e.g. 'x.pt') and convert again")
    for p in sources:
        check_output_name(name or slide_of(p), f"{p}: slide name")
    names = Counter(slide_of(p) for p in sources)
    dupes = sorted(n for n, k in names.items() if k > 1)
    if dupes:
        raise BagError(f"{src}: slides {dupes} have bags in several formats; convert the "
                       "files one by one")
    written, enc_out = [], encoder
    for path in sources:
        bag = read_bag(path, patch_size_level0=patch_size_level0, encoder=encoder,
                       coords_scale=coords_scale)
        if bag.attrs.get("coord_origin") != "top_left" or not bag.patch_size_level0:
            raise BagError(f"{path}: tile size in level-0 px unknown, cannot convert "
                           "coordinates; pass patch_size_level0=")
        geometry = {k: bag.attrs[k] for k in GEOMETRY_KEYS if k in bag.attrs}
        meta = bag.meta
        if fmt == "atlaspatch":
            enc_out = str(encoder or bag.attrs.get("encoder") or meta.get("extractor")
                          or "features")
            meta.setdefault("extractor", enc_out)
            if bag.attrs.get("wsi_path"):
                meta.setdefault("slide_path", bag.attrs["wsi_path"])
        target = bag_path(outdir, name or slide_of(path), fmt)
        clean_stale_temps(target.parent, slide_of(target))  # of killed converts: never live
        out = write_bag(target, bag.features, bag.coords,
                        fmt, meta=meta, encoder=encoder if fmt == "h5" else None, **geometry)
        written.append(out)
    if folder:
        cfg = read_bags_config(config_file(src, "atlaspatch", encoder) if encoder and
                               config_file(src, "atlaspatch", encoder).exists() else src,
                               missing_ok=True)
        target = config_file(dst, fmt, enc_out)
        if cfg is not None and target.resolve() != config_file(src).resolve():
            check_compatible(target, cfg)
            write_bags_config(target, cfg)
    return written


__all__ = ["Bag", "BagWriter", "CHUNK_ROWS", "FORMATS", "GEOMETRY_KEYS", "INDEX_SUFFIX",
           "bag_format", "bag_path", "convert", "geometry_attrs", "index_path_for", "list_bags",
           "parse_geometry", "read_bag", "read_bag_meta", "slide_of", "write_bag"]
