"""cuCIM backend: geometry and pixels against openslide, metadata, WSI grids, errors.

The Makefile installs cuCIM's CPU reader (`cucim-cu13 --no-deps`), so CI runs these.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CMU, CMU_TIFF, NDPI, TCGA_J2K

# through the backend module: it sets cuFile's log path before cucim is first imported
pytest.importorskip("slideflow.slide.backends.cucim_backend")

import slideflow as sf  # noqa: E402
from slideflow.errors import UnsupportedSlideError  # noqa: E402
from slideflow.slide.backends import open_reader  # noqa: E402


def _readers(path):
    return open_reader(path, "cucim"), open_reader(path, "openslide")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("path", [CMU, CMU_TIFF], ids=["svs", "jpeg-tiff"])
def test_level0_reads_identical_to_openslide(slides, path):
    cu, osr = _readers(path)
    w, h = cu.dimensions
    # interior, stored-tile-straddling, right/bottom edges, corner, negative, fully outside
    boxes = [(1000, 1200, 256, 256), (239, 255, 300, 170), (w - 100, 500, 256, 256),
             (700, h - 60, 256, 256), (w - 17, h - 33, 64, 64), (-40, -25, 128, 96),
             (w + 10, 0, 32, 32)]
    for x, y, bw, bh in boxes:
        a = cu.read_region(0, x, y, bw, bh)
        assert a.dtype == np.uint8 and a.shape == (bh, bw, 3)
        np.testing.assert_array_equal(a, osr.read_region(0, x, y, bw, bh), err_msg=str((x, y)))
    outside = cu.read_region(0, w - 17, h - 33, 64, 64)
    assert (outside[33:] == 255).all() and (outside[:, 17:] == 255).all()  # white, not black
    assert (cu.read_region(0, w + 10, 0, 32, 32) == 255).all()


def test_jpeg2000_reads_match_openslide_within_one(slides):
    """Two JPEG 2000 decoders (cuCIM's and openslide's OpenJPEG): measured max |diff| 1,
    11 differing values on the whole level 0, PSNR 114 dB."""
    cu, osr = _readers(TCGA_J2K)
    a = cu.read_region(0, 1500, 1200, 768, 768)
    b = osr.read_region(0, 1500, 1200, 768, 768)
    assert a.std() > 10  # tissue, not background
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert _psnr(a, b) >= 100
    w, h = cu.dimensions
    edge = cu.read_region(0, w - 50, h - 50, 128, 128)
    assert np.abs(edge.astype(int) - osr.read_region(0, w - 50, h - 50, 128, 128)).max() <= 1
    assert (edge[50:] == 255).all()


def test_fractional_level_reads_rint_of_level0(slides):
    """Level 1 of the J2K slide has downsample 2.0005...: a level-0 x reads level pixel
    rint(x / downsample) (cuCIM itself would truncate in float32)."""
    cu, osr = _readers(TCGA_J2K)
    ds = cu.level_downsamples[1]
    assert ds == pytest.approx(2.0005055, abs=1e-6) and ds != int(ds)
    # x = 2002: rint -> 1001 where cuCIM's own float32 truncation gives 1000
    assert int(np.rint(2002 / ds)) == 1001 and int(np.float32(2002) / np.float32(ds)) == 1000
    ref = osr.read_region(1, 0, 0, 1200, 1000)  # offset 0: no sub-pixel interpolation
    for x, y in [(1, 3), (2001, 1599), (2002, 1600), (1000, 1003), (1599, 1000)]:
        lx, ly = int(np.rint(x / ds)), int(np.rint(y / ds))
        got = cu.read_region(1, x, y, 96, 64).astype(int)
        assert np.abs(got - ref[ly:ly + 64, lx:lx + 96]).max() <= 1, (x, y)


@pytest.mark.parametrize("path", [CMU, CMU_TIFF, TCGA_J2K], ids=["svs", "jpeg-tiff", "j2k-svs"])
def test_metadata_matches_openslide(slides, path):
    cu, osr = _readers(path)
    assert cu.name == "cucim"
    assert cu.dimensions == osr.dimensions
    assert cu.level_dimensions == osr.level_dimensions
    assert cu.level_downsamples == osr.level_downsamples
    assert cu.mpp == osr.mpp  # None on the TCGA J2K slide, as with openslide
    assert cu.vendor == osr.vendor
    assert cu.objective_power == osr.objective_power
    for key in ("aperio.MPP", "aperio.AppMag"):
        assert cu.properties.get(key) == osr.properties.get(key)


def test_associated_images(slides):
    imgs = open_reader(CMU, "cucim").associated_images
    assert sorted(imgs) == ["label", "macro", "thumbnail"]
    ref = open_reader(CMU, "openslide").associated_images
    assert imgs["thumbnail"].size == ref["thumbnail"].size


def test_wsi_grid_with_otsu_same_as_default_path(slides):
    cu = sf.WSI(CMU, 128, 128, backend="cucim").qc("otsu")
    ref = sf.WSI(CMU, 128, 128).qc("otsu")
    assert cu.backend == "cucim" and cu.read_path == "region" and ref.read_path == "stored"
    assert len(cu) == len(ref) > 10
    np.testing.assert_array_equal(cu.coords, ref.coords)
    got = np.concatenate([t for t, _ in cu.tiles(batch_size=32, num_threads=2)])
    want = np.concatenate([t for t, _ in ref.tiles(batch_size=32, num_threads=2)])
    np.testing.assert_array_equal(got, want)


def test_wsi_jpeg2000_grid_same_tiles_within_one(slides):
    cu = sf.WSI(TCGA_J2K, 256, 128, mpp=0.5, backend="cucim").qc("otsu")
    ref = sf.WSI(TCGA_J2K, 256, 128, mpp=0.5).qc("otsu")
    assert ref.backend == "openslide"
    np.testing.assert_array_equal(cu.coords, ref.coords)
    idx = np.linspace(0, len(cu) - 1, 6).astype(int)
    for i in idx:
        assert np.abs(cu.read_tile(int(i)).astype(int) - ref.read_tile(int(i))).max() <= 1


def test_auto_never_picks_cucim(slides):
    assert sf.WSI(CMU, 128, 256).backend == "openslide"


def test_ndpi_is_refused_naming_the_backend(slides):
    with pytest.raises(UnsupportedSlideError, match="backend 'cucim' cannot open it"):
        open_reader(NDPI, "cucim")


def test_missing_cucim_says_not_installed(slides, monkeypatch):
    monkeypatch.delitem(sys.modules, "slideflow.slide.backends.cucim_backend", raising=False)
    monkeypatch.setitem(sys.modules, "cucim", None)  # `import cucim` -> ImportError
    with pytest.raises(UnsupportedSlideError, match="backend 'cucim' is not installed"):
        sf.WSI(CMU, 128, 256, backend="cucim")


def test_no_cufile_log_in_the_working_directory(slides, tmp_path):
    """With torch's CUDA libraries installed, `import cucim` initialises cuFile, which wrote
    cufile.log into the current directory; the backend points it at the temp folder."""
    code = ("import torch\nfrom slideflow.slide.backends import open_reader\n"
            f"open_reader({str(CMU)!r}, 'cucim').read_region(0, 0, 0, 8, 8)\n")
    env = {k: v for k, v in os.environ.items() if k != "CUFILE_LOGFILE_PATH"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    assert not (tmp_path / "cufile.log").exists()
