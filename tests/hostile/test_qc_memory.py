"""QC of a single-level slide: memory bounded by the QC image, not by the slide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import slideflow as sf

from .cases import hostile
from .sparse_tiff import write_sparse_tiff

HERE = Path(__file__).parent


@hostile("qc-single-level-60k", "QC of a 60,000 x 60,000 single-level tiled TIFF (sparse, "
         "made by the test)", "peak RSS < 1 GiB, seconds not minutes (the whole level was "
         "read: > 8 GB); measured in a fresh process")
def test_qc_of_a_huge_single_level_slide(tmp_path):
    path = write_sparse_tiff(tmp_path / "huge.tiff", 60_000)
    out = subprocess.run([sys.executable, str(HERE / "qc_probe.py"), str(path), "0.25"],
                         capture_output=True, text=True, timeout=300, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"QC 60k x 60k single level: peak RSS {res['peak_rss'] / 2**20:.0f} MiB, "
          f"{res['seconds']:.1f} s")
    assert res["peak_rss"] < 2**30
    assert res["seconds"] < 120
    assert res["qc_shape"] == [3750, 3750, 3] and res["grid"] == [117, 117]
    assert res["kept"] == 36  # the 6 x 6 stored tiles of tissue, nothing else


@hostile("qc-banded-equals-tiles", "the same single-level slide shrunk tile by tile and in "
         "openslide bands", "identical QC images (the band path serves non-TIFF formats)")
def test_band_and_tile_paths_agree(tmp_path, monkeypatch):
    path = write_sparse_tiff(tmp_path / "s.tiff", 6000, tissue=(2, 2, 5, 6))
    wsi = sf.WSI(path, 256, 128, mpp=0.25)
    k_size = (375, 375)
    fast = wsi.reader.read_level_scaled(0, k_size, band_bytes=1 << 20)
    from slideflow.slide.backends import tiff_scan

    monkeypatch.setattr(tiff_scan, "shrink_tiled_tiff", lambda *a: None)
    banded = wsi.reader.read_level_scaled(0, k_size, band_bytes=1 << 20)
    np.testing.assert_array_equal(fast, banded)
    whole = wsi.reader.read_level_scaled(0, k_size, band_bytes=1 << 30)  # old way: one read
    assert np.abs(whole.astype(int) - banded.astype(int)).max() <= 1  # rounding of 2 steps
