"""`.index.npz` sidecars: one naming rule and one deterministic writer for every format.

TFRecords and `.pt` bags both keep a Slideflow-style `<slide>.index.npz` beside them. The
writer produces `np.savez`'s layout (a stored zip of `.npy` members) with fixed timestamps, so a
rerun writes byte-identical files; nothing is pickled.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

INDEX_SUFFIX = ".index.npz"
# Data files an index sits beside: a TFRecord or a bag (suffix matched case-insensitively).
DATA_SUFFIXES = (".tfrecords", ".pt", ".h5", ".hdf5", ".zarr")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: byte-identical index files


def index_path_for(path: str | os.PathLike) -> Path:
    """`<dir>/<slide>.index.npz` for `<dir>/<slide>.tfrecords` or `<dir>/<slide>.pt`.

    The slide name is the file name without its data suffix (dots inside names are kept);
    an unknown suffix is dropped like `Path.stem` does.
    """
    p = Path(path)
    lower = p.name.lower()
    for suffix in DATA_SUFFIXES:
        if lower.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)] + INDEX_SUFFIX)
    return p.with_name(p.stem + INDEX_SUFFIX)


def save_npz(fh: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Same layout as `np.savez` (stored zip of .npy members) but with fixed timestamps."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
