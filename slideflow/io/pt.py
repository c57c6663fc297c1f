"""Slideflow's feature-bag format: `<slide>.pt` (a float32 (N, D) tensor, loadable with
`torch.load(weights_only=True)`) and `<slide>.index.npz` beside it.

The index's `arr_0` holds tile CENTRES (Slideflow's convention); we add `patch_size_level0` and
a JSON `slideflow` member (geometry attrs + meta) so coordinates convert back to top-left
corners. Both files are staged under temporary names first; then the .pt is moved into place and the
index last (it is the metadata).
torch is imported only when a .pt is written or read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError
from .atomic import atomic_path, discard, disk_full_error, stage
from .bags_config import provenance_of, read_bags_config
from .base import Bag, as_features, geometry_attrs, to_json
from .identity import content_check, content_matches
from .npz import index_path_for, save_npz

log = logging.getLogger("slideflow")


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
        """Stage the .pt and its index as temporary files, then move both into place.

        A full disk fails while staging, before anything is replaced: no .pt is ever left
        without its index (the metadata), and an existing finished bag stays as it was.
        """
        import torch

        n = self.rows
        self._f.resize((n, self.num_features), refcheck=False)  # torch.save writes the storage
        tensor = torch.from_numpy(self._f)
        centres = self._c[:n] + self.patch_size_level0 // 2
        index = index_path_for(self.path)
        sidecar = {"format_version": 1, "coord_origin_arr_0": "centre",
                   "patch_size_level0": self.patch_size_level0, "attrs": self.attrs,
                   "meta": to_json(self.meta)}
        # a file object: fixed archive name, so reruns are byte-identical
        try:
            pt_tmp = stage(self.path, lambda fh: torch.save(tensor, fh))
        except RuntimeError as exc:  # torch reports a failed write (a full disk) this way
            raise _write_error(self.path, exc, tensor.nbytes) from exc
        index_tmp, moved = None, False
        try:
            sidecar["content"] = content_check(pt_tmp)  # a truncated .pt is never reused
            index_tmp = stage_pt_index(index, centres, sidecar)
            index.unlink(missing_ok=True)  # no stale index beside the new .pt
            os.replace(pt_tmp, self.path)
            moved = True
            os.replace(index_tmp, index)  # metadata last
        except BaseException:
            discard(pt_tmp)
            discard(index_tmp)
            if moved:  # our .pt is in place without its index: not a bag
                discard(self.path)
            raise
        return self.path

    def abort(self) -> None:
        self._f = self._c = np.empty((0, 2))


def _write_error(path: Path, exc: RuntimeError, nbytes: int) -> OSError:
    """torch.save's RuntimeError as the OSError it is: the full-disk error behind it, or
    ENOSPC when the folder has no room for the tensor, else EIO; naming the .pt."""
    import errno
    import shutil


    full = disk_full_error(exc)
    if full is not None:
        return OSError(full.errno, full.strerror, str(path))
    try:
        no_room = shutil.disk_usage(path.parent).free < nbytes + (1 << 20)
    except OSError:
        no_room = False
    code = errno.ENOSPC if no_room else errno.EIO
    return OSError(code, f"{os.strerror(code)} (torch.save: {exc})", str(path))


def _pt_index_arrays(centres: np.ndarray, sidecar: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"arr_0": np.ascontiguousarray(centres, np.int64).reshape(-1, 2),
            "patch_size_level0": np.asarray([sidecar["patch_size_level0"]], np.int64),
            "slideflow": np.asarray([json.dumps(to_json(dict(sidecar)), sort_keys=True)])}


def stage_pt_index(index: Path, centres: np.ndarray, sidecar: Mapping[str, Any]) -> Path:
    """`write_pt_index` into a temporary file beside `index` (not moved into place)."""
    arrays = _pt_index_arrays(centres, sidecar)
    return stage(index, lambda fh: save_npz(fh, arrays))


def write_pt_index(index: Path, centres: np.ndarray, sidecar: Mapping[str, Any]) -> None:
    """Slideflow index: `arr_0` = (N, 2) centres; our extras (1-element arrays):
    `patch_size_level0` int64 and `slideflow` (JSON: attrs + meta). No pickled objects."""
    os.replace(stage_pt_index(index, centres, sidecar), index)  # fixed zip timestamps


def load_pt_index(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
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
    try:
        features = as_features(t.float().numpy() if t.is_floating_point() and
                               t.dtype != torch.float32 else t.numpy())
    except (ValueError, TypeError) as e:
        raise BagError(f"{path}: {e}") from None
    centres, sidecar = load_pt_index(path)
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


def read_pt_meta(path: Path) -> dict[str, Any] | None:
    """The `meta` stored in a finished .pt bag's index, or None when there is no bag or the
    .pt no longer has the size and sampled digest its index recorded (truncated, replaced)."""
    if not path.exists():
        return None
    sidecar = load_pt_index(path)[1]
    if not content_matches(path, sidecar.get("content")):
        log.info("%s: its size or content differs from what its index recorded (truncated "
                 "or replaced?); not reused", path)
        return None
    return sidecar.get("meta")


# -- the format table's interface (`io.formats`) ------------------------------------------------

def open_sink(path: Path, *, num_features: int, patch_size_level0: int,
              meta: Mapping[str, Any] | None, attrs: Mapping[str, Any] | None,
              encoder: str | None, chunk_rows: int, expected_rows: int | None) -> PtSink:
    """The sink of one .pt bag (one tensor: `encoder` and `chunk_rows` do not apply)."""
    return PtSink(path, num_features, patch_size_level0, meta, attrs, expected_rows)


def read(path: Path, *, patch_size_level0: int | None, encoder: str | None,
         coords_scale: float | None) -> Bag:
    """A .pt bag (`encoder` and `coords_scale` do not apply)."""
    return read_pt(path, patch_size_level0)


def read_meta(path: Path, encoder: str | None) -> dict[str, Any] | None:
    return read_pt_meta(path)


def write_embedding(dest: Path, encoder: str, vec: np.ndarray, meta: Mapping[str, Any]) -> Path:
    """A slide embedding as a float32 (D,) tensor (`torch.load(weights_only=True)`), atomically;
    one encoder per file, so `encoder` and `meta` are not stored."""
    import torch

    with atomic_path(dest) as tmp:
        torch.save(torch.from_numpy(np.asarray(vec, np.float32).reshape(-1).copy()), tmp)
    return dest


def read_embedding(path: Path, encoder: str | None) -> np.ndarray:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True).numpy()


def has_embedding(dest: Path, encoder: str) -> bool:
    return dest.exists()
