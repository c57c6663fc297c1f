"""`sf.io.convert` never writes a silently different bag: dtypes, finiteness, coordinate ranges
and claimed shapes are checked before anything is written; leftovers of killed converts go;
failed writes are OSErrors; hidden names are reported, not skipped."""

from __future__ import annotations

import errno
import subprocess
import sys

import h5py
import numpy as np
import pytest

import slideflow as sf
from slideflow.errors import BagError

from .cases import hostile, hostile_params


def _h5(path, features, coords, **attrs):
    with h5py.File(path, "w") as f:
        f["features"] = features
        f["coords"] = coords
        for k, v in {"patch_size_level0": 256, **attrs}.items():
            f["coords"].attrs[k] = v
    return path


GOOD_C = np.array([[0, 0], [256, 0]], np.int64)
BAD = hostile_params([
    ("convert-float64-1e300", "an h5 with float64 features of 1e300",
     "BagError 'beyond float32's range; refusing a lossy conversion' (became inf)",
     (np.full((2, 4), 1e300), GOOD_C, "float32")),
    ("convert-text-features", "an h5 whose features are byte strings (b'1.5')",
     "BagError 'features of dtype |S3 are not numbers' (were parsed as text)",
     (np.array([[b"1.5"] * 4] * 2), GOOD_C, "not numbers")),
    ("convert-nan-coords", "an h5 whose float coords hold NaN",
     "BagError 'finite integers' (became INT64_MIN)",
     (np.zeros((2, 4), np.float32), np.array([[np.nan, 0], [256, 0]]), "finite integers")),
    ("convert-fractional-coords", "an h5 with coords 1.5", "BagError (was truncated to 1)",
     (np.zeros((2, 4), np.float32), np.array([[1.5, 0], [256, 0]]), "finite integers")),
    ("convert-uint64-coords", "an h5 with uint64 coords of 2**63 + 5",
     "BagError 'beyond +/-2**53' (wrapped negative)",
     (np.zeros((2, 4), np.float32), np.array([[2**63 + 5, 0], [0, 0]], np.uint64), "2\\*\\*53")),
])


@pytest.mark.parametrize("case", BAD)
def test_convert_refuses_lossy_inputs(case, tmp_path):
    features, coords, message = case
    src = _h5(tmp_path / "A.h5", features, coords)
    with pytest.raises(BagError, match=message) as exc:
        sf.io.convert(src, tmp_path / "out" / "A.pt")
    assert str(src) in str(exc.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@hostile("convert-coords-scale-nan", "convert of a TIAToolbox zarr with coords_scale=nan / inf",
         "BagError 'coords_scale must be a finite number > 0' (every coordinate became "
         "INT64_MIN)")
def test_coords_scale_must_be_finite(tmp_path):
    import zarr

    src = tmp_path / "A.zarr"
    g = zarr.open_group(str(src), mode="w")
    g["probabilities"] = np.zeros((2, 4), np.float32)
    g["coordinates"] = np.array([[0, 0, 224, 224], [224, 0, 448, 224]], np.int64)
    for scale in (float("nan"), float("inf"), -1.0):
        with pytest.raises(BagError, match="coords_scale must be a finite number"):
            sf.io.convert(src, tmp_path / "out" / "A.h5", coords_scale=scale)
    bag = sf.io.read_bag(src, coords_scale=2.0)
    assert bag.coords.tolist() == [[0, 0], [448, 0]]


@hostile("convert-h5-claims-huge-shape", "an h5 of a few KB whose features dataset claims "
         "shape (1e9, 1024)", "BagError 'claims shape (1000000000, 1024) (3.73e+03 GiB) but "
         "the file holds N bytes' (was a raw MemoryError)")
def test_h5_claiming_a_huge_shape(tmp_path):
    src = tmp_path / "A.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("features", shape=(10**9, 1024), dtype="float32", chunks=(1, 1024))
        f["coords"] = np.zeros((10**9 // 10**9, 2), np.int64)
        f["coords"].attrs["patch_size_level0"] = 256
    assert src.stat().st_size < 100_000
    with pytest.raises(BagError, match=r"claims shape \(1000000000, 1024\)"):
        sf.io.convert(src, tmp_path / "A.pt")


@hostile("convert-killed-temp", "a `B.h5.tmp-<dead pid>-...` left in the destination by a "
         "killed convert, then convert rerun", "the leftover is removed (it stayed forever); "
         "a live process's temporary file is kept")
def test_convert_removes_leftovers_of_killed_runs(tmp_path):
    from slideflow.io.atomic import host_tag

    src = _h5(tmp_path / "B.h5", np.ones((2, 4), np.float32), GOOD_C)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"B.h5.tmp-{dead.pid}-{host_tag()}-abcd1234"
    live = out / f"B.h5.tmp-{1}-{host_tag()}-live"  # pid 1 is alive: never removed
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    sf.io.convert(src, out / "B.h5")
    assert not stale.exists() and live.exists()
    assert sf.io.read_bag(out / "B.h5").features.tolist() == np.ones((2, 4)).tolist()


@hostile("convert-dot-names", "a folder holding '..pt' and '.x.pt' next to A.pt converted",
         "BagError naming both hidden files (were skipped silently); converting '..pt' alone "
         "fails 'cannot name an output file'")
def test_hidden_bags_are_reported(tmp_path):
    src = tmp_path / "bags"
    src.mkdir()
    sf.io.write_bag(src / "A.pt", np.ones((2, 4), np.float32), GOOD_C, patch_size_level0=256)
    (src / "..pt").write_bytes((src / "A.pt").read_bytes())
    (src / ".x.pt").write_bytes((src / "A.pt").read_bytes())
    with pytest.raises(BagError, match=r"\['..pt', '.x.pt'\] start with '.'"):
        sf.io.convert(src, tmp_path / "h5", format="h5")
    assert not (tmp_path / "h5").exists()
    with pytest.raises(sf.errors.InvalidArgumentError, match="cannot name an output file"):
        sf.io.convert(src / "..pt", tmp_path / "h5", format="h5")


@hostile("convert-pt-disk-full", "convert to .pt onto a full disk (torch.save's RuntimeError "
         "'file write failed')", "OSError ENOSPC naming the .pt (was torch's raw "
         "RuntimeError); no temporary file left")
def test_pt_write_failure_is_an_oserror(tmp_path, monkeypatch):
    import shutil

    import torch

    src = _h5(tmp_path / "C.h5", np.ones((2, 4), np.float32), GOOD_C)

    def failing_save(obj, fh, *a, **k):
        fh.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError) as exc:
        sf.io.convert(src, tmp_path / "out" / "C.pt")
    assert exc.value.errno == errno.ENOSPC and "C.pt" in str(exc.value)
    assert list((tmp_path / "out").iterdir()) == []
