"""Feature bags: one (N, D) float32 matrix of tile features per slide, with tile coordinates.

Three on-disk formats, chosen by suffix (layouts in docs/outputs.md):

    <slide>.pt + <slide>.index.npz   Slideflow: torch tensor; index `arr_0` = tile CENTRES
    <slide>.h5                       CLAM/TRIDENT: `features`, `coords` (top-left) + attrs
    <slide>.zarr/                    TIAToolbox style: `features`, `coordinates` (x0, y0, x1, y1)

In memory, coordinates are always int64 TOP-LEFT corners in level-0 pixels; each format's
convention is applied only when a file is written or read. `patch_size_level0` (the tile extent
in level-0 pixels) is what converts between top-left, centres and boxes, so every writer needs it.

Writes are atomic: rows go to a temporary name that becomes the bag only once complete
(`os.replace`), metadata last; a crash leaves at worst a `*.tmp-*` leftover, never a file that
looks finished. torch, h5py and zarr are imported only when a bag of that format is touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from .atomic import AtomicWriter, atomic_open, is_temporary

log = logging.getLogger("slideflow")

FORMATS = {"pt": ".pt", "h5": ".h5", "zarr": ".zarr"}
_SUFFIXES = {".pt": "pt", ".h5": "h5", ".hdf5": "h5", ".zarr": "zarr"}
INDEX_SUFFIX = ".index.npz"
CHUNK_ROWS = 512
# TRIDENT's geometry attributes (read from its IO.coords_to_h5), stored by every format.
GEOMETRY_KEYS = ("patch_size", "patch_size_level0", "level0_magnification",
                 "target_magnification", "overlap", "level0_width", "level0_height")
_INT_KEYS = {"patch_size", "patch_size_level0", "overlap", "level0_width", "level0_height"}


# -- small helpers shared by the format modules -------------------------------------------------

def to_json(obj: Any) -> Any:
    """`obj` as plain JSON types (numpy scalars/arrays, tuples, Paths converted)."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def dumps_meta(meta: Mapping[str, Any] | None) -> str:
    return json.dumps(to_json(dict(meta or {})), sort_keys=True, separators=(",", ":"))


def _number(value: Any, key: str) -> int | float | None:
    if value is None or isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    try:
        return int(value) if key in _INT_KEYS else float(value)
    except (TypeError, ValueError):
        return None


def _magnification(tile_px: Any, tile_um: Any) -> float | None:
    """Target magnification from Slideflow's tile_um ('20x' or microns per tile; 10x = 1 µm/px)."""
    if isinstance(tile_um, str):
        s = tile_um.strip().lower()
        try:
            return float(s[:-1]) if s.endswith("x") else 10.0 * float(tile_px) / float(s)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
    try:
        return 10.0 * float(tile_px) / float(tile_um)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def geometry_attrs(patch_size_level0: int | None, meta: Mapping[str, Any] | None = None,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, int | float]:
    """TRIDENT-style geometry attributes, derived from the engine's per-slide `meta`.

    `patch_size` = tile_px; `level0_magnification` = objective power (else 10 / mpp);
    `target_magnification` from tile_um; `overlap` = tile_px - tile_px // stride_div (target
    pixels, as TRIDENT). Unknown values are left out rather than written as 'None'.
    """
    meta = dict(meta or {})
    sel = (meta.get("request") or {}).get("selection") or {}
    tile_px = meta.get("patch_size", meta.get("tile_px"))
    mpp = _number(meta.get("mpp"), "mpp")
    level0_mag = meta.get("level0_magnification", meta.get("objective_power"))
    if _number(level0_mag, "level0_magnification") is None and mpp:
        level0_mag = 10.0 / mpp
    stride_div = meta.get("stride_div", sel.get("stride_div"))
    overlap = meta.get("overlap")
    if overlap is None and stride_div and tile_px:
        overlap = int(tile_px) - int(tile_px) // int(stride_div)
    raw = {
        "patch_size": tile_px,
        "patch_size_level0": patch_size_level0,
        "level0_magnification": level0_mag,
        "target_magnification": meta.get("target_magnification",
                                         _magnification(tile_px, meta.get("tile_um"))),
        "overlap": overlap,
        "level0_width": meta.get("level0_width"),
        "level0_height": meta.get("level0_height"),
    }
    raw.update({k: v for k, v in (overrides or {}).items() if k in GEOMETRY_KEYS})
    return parse_geometry(raw)


def parse_geometry(attrs: Mapping[str, Any]) -> dict[str, int | float]:
    """The GEOMETRY_KEYS of `attrs` as int/float; unknown or 'None' values are dropped."""
    out = {}
    for key in GEOMETRY_KEYS:
        value = _number(attrs.get(key), key)
        if value is not None:
            out[key] = value
    return out


def bag_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """'pt' | 'h5' | 'zarr' from `fmt` or the file suffix."""
    if fmt is not None:
        f = str(fmt).lower().lstrip(".")
        f = {"hdf5": "h5", "torch": "pt"}.get(f, f)
        if f not in FORMATS:
            raise ValueError(f"unknown bag format {fmt!r}; use one of {sorted(FORMATS)}")
        return f
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise BagError(f"{path}: cannot tell the bag format from the suffix {suffix!r}; "
                       "use .pt, .h5 or .zarr (or pass format=)")
    return _SUFFIXES[suffix]


def bag_path(outdir: str | os.PathLike, slide: str, fmt: str = "pt") -> Path:
    """`<outdir>/<slide>.pt|.h5|.zarr`."""
    return Path(outdir) / f"{slide}{FORMATS[bag_format('', fmt)]}"


def slide_of(path: str | os.PathLike) -> str:
    """Slide name of a bag path (the name without its bag suffix; dots in names are kept)."""
    p = Path(path)
    return p.name[: -len(p.suffix)] if p.suffix.lower() in _SUFFIXES else p.name


def index_path_for(path: str | os.PathLike) -> Path:
    """`<dir>/<slide>.index.npz` for `<dir>/<slide>.pt`."""
    p = Path(path)
    return p.with_name(slide_of(p) + INDEX_SUFFIX)


def list_bags(folder: str | os.PathLike, fmt: str | None = None) -> list[Path]:
    """Finished bags in `folder` (sorted; temporaries of interrupted writes are skipped)."""
    folder = Path(folder)
    if not _is_folder(folder):
        raise BagError(f"{folder}: not a folder of feature bags")
    f = bag_format("", fmt) if fmt else None
    exts = {s for s, v in _SUFFIXES.items() if f is None or v == f}
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in exts and not is_temporary(p)
                  and not p.name.startswith("."))


def check_rows(features: Any, coords: Any, num_features: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Validate one batch: float32 (B, D) features, int64 (B, 2) top-left coords."""
    if hasattr(features, "detach"):  # a torch tensor
        features = features.detach().cpu().float().numpy()
    f = np.asarray(features)
    c = np.asarray(coords)
    if f.ndim != 2 or (num_features is not None and f.shape[1] != num_features):
        raise ValueError(f"features must be (B, {num_features or 'D'}), got {f.shape}")
    if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] != f.shape[0]:
        raise ValueError(f"coords must be ({f.shape[0]}, 2) top-left corners, got {c.shape}")
    if c.dtype.kind == "f" and not np.array_equal(c, np.round(c)):
        raise ValueError("coords must be integers (level-0 pixels)")
    return f.astype(np.float32, copy=False), c.astype(np.int64, copy=False)


@dataclass
class Bag:
    """A bag in memory: features float32 (N, D), coords int64 (N, 2) top-left level-0.

    `attrs` holds the geometry attributes (GEOMETRY_KEYS), `meta` (the engine's per-slide
    record), `format`, and `coord_origin`: 'top_left', or 'centre' for a Slideflow .pt whose
    tile size is unknown (see `read_bag`).
    """

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def patch_size_level0(self) -> int | None:
        v = self.attrs.get("patch_size_level0")
        return None if v is None else int(v)

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.attrs.get("meta") or {})

    def _size(self) -> int:
        if self.attrs.get("coord_origin", "top_left") != "top_left" or not self.patch_size_level0:
            raise BagError(f"{self.path}: tile size in level-0 pixels unknown; "
                           "pass patch_size_level0= to read_bag")
        return self.patch_size_level0

    def centres(self) -> np.ndarray:
        """Tile centres (Slideflow's convention): top-left + patch_size_level0 // 2."""
        return self.coords + self._size() // 2

    def boxes(self) -> np.ndarray:
        """(N, 4) [x0, y0, x1, y1] level-0 boxes (TIAToolbox's convention)."""
        return np.concatenate([self.coords, self.coords + self._size()], axis=1)

    def __repr__(self) -> str:
        return (f"Bag({self.path.name if self.path else '?'}: {len(self)} x {self.num_features}, "
                f"patch_size_level0={self.patch_size_level0})")


# -- streaming sinks ----------------------------------------------------------------------------

class ChunkedSink:
    """Base of the h5/zarr sinks: rows are buffered and reach disk one full chunk at a time."""

    def __init__(self, num_features: int, chunk_rows: int = CHUNK_ROWS):
        self.num_features = int(num_features)
        self.chunk_rows = max(1, int(chunk_rows))
        self._bf = np.empty((self.chunk_rows, self.num_features), np.float32)
        self._bc = np.empty((self.chunk_rows, 2), np.int64)
        self._fill = 0
        self.rows = 0

    def append(self, f: np.ndarray, c: np.ndarray) -> None:
        i, n, cr = 0, len(f), self.chunk_rows
        while i < n:
            if self._fill == 0 and n - i >= cr:  # whole chunks straight from the batch
                k = (n - i) // cr * cr
                self._write(f[i:i + k], c[i:i + k])
                i += k
                continue
            take = min(cr - self._fill, n - i)
            self._bf[self._fill:self._fill + take] = f[i:i + take]
            self._bc[self._fill:self._fill + take] = c[i:i + take]
            self._fill += take
            i += take
            if self._fill == cr:
                self._write(self._bf, self._bc)
                self._fill = 0
        self.rows += n

    def flush_tail(self) -> None:
        if self._fill:
            self._write(self._bf[:self._fill], self._bc[:self._fill])
            self._fill = 0

    def _write(self, f: np.ndarray, c: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class PtSink:
    """A .pt bag is one tensor, so rows accumulate in a growing float32 buffer (amortised 2x)."""

    def __init__(self, path: Path, num_features: int, patch_size_level0: int,
                 meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None,
                 expected_rows: int | None = None):
        self.path = path
        self.num_features = int(num_features)
        self.patch_size_level0 = int(patch_size_level0)
        self.meta = dict(meta or {})
        self.attrs = geometry_attrs(patch_size_level0, meta, attrs)
        cap = max(int(expected_rows or 0), 1024)
        self._f = np.empty((cap, self.num_features), np.float32)
        self._c = np.empty((cap, 2), np.int64)
        self.rows = 0

    def append(self, f: np.ndarray, c: np.ndarray) -> None:
        need = self.rows + len(f)
        if need > len(self._f):
            cap = max(need, 2 * len(self._f))
            self._f.resize((cap, self.num_features), refcheck=False)  # realloc, no extra copy
            self._c.resize((cap, 2), refcheck=False)
        self._f[self.rows:need] = f
        self._c[self.rows:need] = c
        self.rows = need

    def close(self) -> Path:
        import torch

        n = self.rows
        self._f.resize((n, self.num_features), refcheck=False)  # torch.save writes the storage
        tensor = torch.from_numpy(self._f)
        centres = self._c[:n] + self.patch_size_level0 // 2
        index = index_path_for(self.path)
        with atomic_open(self.path, "wb") as fh:  # a file object: fixed archive name, so
            torch.save(tensor, fh)                 # reruns are byte-identical
            index.unlink(missing_ok=True)          # no stale index beside the new .pt
        sidecar = {"format_version": 1, "coord_origin_arr_0": "centre",
                   "patch_size_level0": self.patch_size_level0, "attrs": self.attrs,
                   "meta": to_json(self.meta)}
        write_pt_index(index, centres, sidecar)  # metadata last
        return self.path

    def abort(self) -> None:
        self._f = self._c = np.empty((0, 2))


def write_pt_index(index: Path, centres: np.ndarray, sidecar: Mapping[str, Any]) -> None:
    """Slideflow index: `arr_0` = (N, 2) centres; our extras (1-element arrays):
    `patch_size_level0` int64 and `slideflow` (JSON: attrs + meta). No pickled objects."""
    from .tfrecord import _save_npz  # fixed zip timestamps -> byte-identical reruns

    arrays = {"arr_0": np.ascontiguousarray(centres, np.int64).reshape(-1, 2),
              "patch_size_level0": np.asarray([sidecar["patch_size_level0"]], np.int64),
              "slideflow": np.asarray([json.dumps(to_json(dict(sidecar)), sort_keys=True)])}
    with atomic_open(index, "wb") as fh:
        _save_npz(fh, arrays)


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
            from .h5 import H5Sink

            self._sink = H5Sink(self.path, num_features, patch_size_level0, meta, attrs,
                                encoder=encoder, chunk_rows=chunk_rows)
        else:
            from .zarr_store import ZarrSink

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

def _load_pt_index(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    index = index_path_for(path)
    if not index.exists():
        raise BagError(f"{path}: its index {index.name} is missing (interrupted write?); "
                       "regenerate the bag")
    try:
        with np.load(index, allow_pickle=False) as z:
            centres = np.asarray(z["arr_0"], np.int64)
            sidecar = (json.loads(str(z["slideflow"].reshape(-1)[0]))
                       if "slideflow" in z.files else {})
            if "patch_size_level0" in z.files and "patch_size_level0" not in sidecar:
                sidecar["patch_size_level0"] = int(z["patch_size_level0"].reshape(-1)[0])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise BagError(f"{index}: unreadable bag index ({e}); regenerate the bag") from e
    return centres.reshape(-1, 2), sidecar


def _folder_patch_size(folder: Path) -> int | None:
    from .bags_config import provenance_of, read_bags_config

    with contextlib.suppress(BagError):
        cfg = read_bags_config(folder, missing_ok=True) or {}
        prov = provenance_of(cfg)
        value = prov.get("patch_size_level0", (prov.get("geometry") or {}).get("patch_size_level0"))
        return int(value) if value else None
    return None


def read_pt(path: Path, patch_size_level0: int | None = None) -> Bag:
    import pickle

    import torch

    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError) as e:
        raise BagError(f"{path}: not a readable .pt bag ({type(e).__name__}: {e})") from e
    if not isinstance(t, torch.Tensor) or t.ndim != 2:
        raise BagError(f"{path}: expected a 2-D tensor (N, D), got "
                       f"{getattr(t, 'shape', type(t).__name__)}")
    features = t.float().numpy() if t.dtype != torch.float32 else t.numpy()
    centres, sidecar = _load_pt_index(path)
    if len(centres) != len(features):
        raise BagError(f"{path}: {len(features)} rows but its index has {len(centres)}")
    size = patch_size_level0 or sidecar.get("patch_size_level0") or _folder_patch_size(path.parent)
    attrs: dict[str, Any] = {**sidecar.get("attrs", {}), "meta": sidecar.get("meta", {}),
                             "format": "pt"}
    if size:
        attrs["patch_size_level0"] = int(size)
        attrs["coord_origin"] = "top_left"
        coords = centres - int(size) // 2
    else:
        log.warning("%s: tile size in level-0 px unknown (no patch_size_level0 in its index or "
                    "bags_config.json); coords are Slideflow tile centres", path)
        attrs["coord_origin"] = "centre"
        coords = centres
    return Bag(np.ascontiguousarray(features), coords, attrs, path)


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
        from .h5 import read_h5

        bag = read_h5(path, encoder=encoder)
    else:
        from .zarr_store import read_zarr

        bag = read_zarr(path)
    if patch_size_level0 and not bag.patch_size_level0:
        bag.attrs["patch_size_level0"] = int(patch_size_level0)
    return bag


def read_bag_meta(outdir: str | os.PathLike, slide: str, fmt: str = "pt") -> dict[str, Any] | None:
    """The `meta` a BagWriter stored with a finished bag, or None (missing, old or corrupt)."""
    path = bag_path(outdir, slide, fmt)
    try:
        if bag_format("", fmt) == "pt":
            return _load_pt_index(path)[1].get("meta") if path.exists() else None
        if bag_format("", fmt) == "h5":
            from .h5 import read_h5_meta

            return read_h5_meta(path)
        from .zarr_store import read_zarr_meta

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


def _is_folder(path: Path) -> bool:
    """A folder of bags (a .zarr bag is itself a folder)."""
    return path.is_dir() and path.suffix.lower() != ".zarr"


def _iter_sources(src: Path) -> Iterator[Path]:
    yield from (list_bags(src) if _is_folder(src) else [src])


def convert(src: str | os.PathLike, dst: str | os.PathLike, format: str | None = None, *,
            patch_size_level0: int | None = None, encoder: str | None = None) -> list[Path]:
    """Convert a bag, or every bag of a folder, between .pt(+index), .h5 and .zarr.

    Features, coordinates, geometry attributes and meta are carried over exactly. A folder's
    bags_config.json is copied last. Returns the written paths.
    """
    from .bags_config import CONFIG_NAME, check_compatible, read_bags_config, write_bags_config

    src, dst = Path(src), Path(dst)
    folder = _is_folder(src)
    if folder:
        if format is None:
            raise ValueError("converting a folder needs format= ('pt', 'h5' or 'zarr')")
        fmt, outdir, name = bag_format("", format), dst, None
    else:
        to_dir = _is_folder(dst) or dst.suffix.lower() not in _SUFFIXES
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


__all__ = ["Bag", "BagWriter", "FORMATS", "GEOMETRY_KEYS", "bag_format", "bag_path", "convert",
           "geometry_attrs", "index_path_for", "list_bags", "parse_geometry", "read_bag",
           "read_bag_meta",
           "slide_of", "write_bag"]
