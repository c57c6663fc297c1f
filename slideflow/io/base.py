"""Bag types and geometry attributes shared by every feature-bag format.

In memory, coordinates are always int64 TOP-LEFT corners in level-0 pixels; each format module
(`pt`, `h5`, `zarr_store`) applies its own convention only when a file is written or read.
`patch_size_level0` (the tile extent in level-0 pixels) is what converts between top-left,
centres and boxes, so every writer needs it. No format library is imported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from . import formats
from .atomic import is_temporary

#: {bag format: suffix}, from the format table (`io.formats`)
FORMATS = {f.name: f.suffix for f in formats.TABLE if formats.BAGS in f.outputs}
#: AtlasPatch keeps its per-slide h5 files in this subfolder of the output folder
ATLASPATCH_DIR = str(formats.get("atlaspatch").subdir)
#: {suffix: bag format} of the files a suffix identifies
BAG_SUFFIXES = formats.suffixes()
CHUNK_ROWS = 512
# TRIDENT's geometry attributes (read from its IO.coords_to_h5), stored by every format.
GEOMETRY_KEYS = ("patch_size", "patch_size_level0", "level0_magnification",
                 "target_magnification", "overlap", "level0_width", "level0_height")
_INT_KEYS = {"patch_size", "patch_size_level0", "overlap", "level0_width", "level0_height"}


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
    """'pt' | 'h5' | 'zarr' | 'atlaspatch' from `fmt`, or 'pt' | 'h5' | 'zarr' from the file
    suffix (an AtlasPatch file is an .h5; its layout is recognised when it is read)."""
    if fmt is not None:
        f = formats.canonical(fmt)
        if f not in FORMATS:
            raise ValueError(f"unknown bag format {fmt!r}; use one of {sorted(FORMATS)}")
        return f
    suffix = Path(path).suffix.lower()
    if suffix not in BAG_SUFFIXES:
        raise BagError(f"{path}: cannot tell the bag format from the suffix {suffix!r}; "
                       "use .pt, .h5 or .zarr (or pass format=)")
    return BAG_SUFFIXES[suffix]


def bag_path(outdir: str | os.PathLike, slide: str, fmt: str = "pt") -> Path:
    """`<outdir>/<slide>.pt|.h5|.zarr`, or AtlasPatch's `<outdir>/patches/<slide>.h5`."""
    return formats.get(bag_format("", fmt)).path(outdir, slide)


def slide_of(path: str | os.PathLike) -> str:
    """Slide name of a bag path (the name without its bag suffix; dots in names are kept)."""
    p = Path(path)
    return p.name[: -len(p.suffix)] if p.suffix.lower() in BAG_SUFFIXES else p.name


def is_bag_folder(path: Path) -> bool:
    """A folder of bags (a .zarr bag is itself a folder)."""
    return path.is_dir() and path.suffix.lower() != ".zarr"


def list_bags(folder: str | os.PathLike, fmt: str | None = None) -> list[Path]:
    """Finished bags in `folder` (sorted; temporaries of interrupted writes are skipped)."""
    folder = Path(folder)
    if not is_bag_folder(folder):
        raise BagError(f"{folder}: not a folder of feature bags")
    f = bag_format("", fmt) if fmt else None
    for entry in formats.TABLE:  # AtlasPatch: an output folder whose files are in patches/
        if not entry.subdir or formats.BAGS not in entry.outputs:
            continue
        sub = folder / entry.subdir
        if f == entry.name or (f is None and sub.is_dir() and not any(
                p.suffix.lower() in BAG_SUFFIXES for p in folder.iterdir())):
            if not sub.is_dir():
                return []
            folder, f = sub, entry.within
            break
    exts = {s for s, v in BAG_SUFFIXES.items() if f is None or v == f}
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in exts and not is_temporary(p)
                  and not p.name.startswith("."))


#: largest |coordinate| accepted (level-0 px): exact in float64, far beyond any slide, and far
#: from INT64_MIN, which a NaN or inf cast to int64 becomes
COORD_LIMIT = 2 ** 53


def as_features(features: Any) -> np.ndarray:
    """float32 features, refusing what a cast would corrupt: non-numeric dtypes (bytes would
    be parsed as text) and finite values beyond float32's range (a float64 1e300 would become
    inf). Values already NaN/inf are carried bit for bit: a conversion does not judge them."""
    f = np.asarray(features)
    if f.dtype.kind not in "fiub":
        raise ValueError(f"features of dtype {f.dtype} are not numbers")
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused below
        out = f.astype(np.float32, copy=False)
    if f.dtype.kind == "f" and f.dtype.itemsize > 4:
        bad = ~np.isfinite(out) & np.isfinite(f)
        if bad.any():
            rows = int(bad.reshape(len(out), -1).any(axis=1).sum()) if out.ndim else 1
            raise ValueError(f"{rows} feature row(s) hold values beyond float32's range "
                             "(|x| > 3.4e38); refusing a lossy conversion")
    return out


def as_coords(coords: Any) -> np.ndarray:
    """int64 coordinates, refusing what a cast would corrupt: NaN/inf, fractions, and values
    beyond COORD_LIMIT (a uint64 would wrap, NaN would become INT64_MIN)."""
    c = np.asarray(coords)
    if c.dtype.kind not in "iuf":
        raise ValueError(f"coords of dtype {c.dtype} are not numbers")
    if c.size == 0:
        return c.astype(np.int64)
    if c.dtype.kind == "f" and not (np.isfinite(c).all() and np.array_equal(c, np.round(c))):
        raise ValueError("coords must be finite integers (level-0 pixels)")
    if c.dtype.kind == "u":
        too_big = int(c.max()) > COORD_LIMIT
    else:
        too_big = float(np.abs(c.astype(np.float64)).max()) > COORD_LIMIT
    if too_big:
        raise ValueError(f"coords beyond +/-2**53 level-0 px (max |x| "
                         f"{np.abs(c.astype(np.float64)).max():.3g}): not a slide position")
    return c.astype(np.int64, copy=False)


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
    return as_features(f), as_coords(c)


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
