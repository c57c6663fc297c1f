"""Slide layer on the real slides in ../shared/data/slides."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import openslide
import pytest

import slideflow as sf
from slideflow import errors

from conftest import CMU, CMU_DICOM, CMU_TIFF, DICOM_CAMELYON, NDPI, QPTIFF, TCGA_J2K

pytestmark = pytest.mark.usefixtures("slides")


@pytest.mark.parametrize(
    "path, dims, ndown, mpp, backend",
    [
        (CMU, (2220, 2967), 1, 0.499, "openslide"),
        (CMU_DICOM, (2220, 2967), 1, 0.499, "dicom"),
        (CMU_TIFF, (2220, 2967), 1, 0.00499, "openslide"),
        (NDPI, (3968, 4864), 7, 0.2282, "openslide"),
        (DICOM_CAMELYON, (1152, 700), 1, 28.969, "dicom"),
    ],
)
def test_metadata_matches_sources(path, dims, ndown, mpp, backend):
    wsi = sf.WSI(path, 64, 64 * 40.0 if mpp > 1 else 256)
    assert wsi.dimensions == dims
    assert len(wsi.levels) == ndown
    assert wsi.mpp == pytest.approx(mpp, rel=1e-3)
    assert wsi.backend == backend


def test_cmu_properties_and_counts():
    wsi = sf.WSI(CMU, 128, 256)
    assert wsi.vendor == "aperio"
    assert set(wsi.associated_images) == {"label", "macro", "thumbnail"}
    assert wsi.full_extract_px == 513
    assert wsi.grid.shape == (5, 4) and len(wsi) == 20 == wsi.grid.sum()
    assert wsi.coords.dtype == np.int64 and wsi.coords[5].tolist() == [513, 513]
    wsi.qc("otsu")
    assert len(wsi) == 7
    assert wsi.grid.sum() == 7
    wsi.qc(None)
    assert len(wsi) == 20


def test_missing_mpp_and_override():
    with pytest.raises(errors.MissingMPPError, match="mpp="):
        sf.WSI(TCGA_J2K, 128, 256)
    wsi = sf.WSI(TCGA_J2K, 256, 256, mpp=0.5)  # 512 level-0 px = 256 px at level 1 (2.0005)
    assert wsi.level_choice.level == 1 and not wsi.level_choice.needs_resize
    assert len(wsi) == 48
    small = sf.WSI(TCGA_J2K, 128, 256, mpp=0.5)
    assert (small.level_choice.level, small.level_choice.read_px) == (1, 256)


def test_wrong_mpp_override_on_generic_tiff():
    wrong = sf.WSI(CMU_TIFF, 128, 256)
    assert len(wrong) == 0  # 256 µm at 0.00499 µm/px is larger than the slide
    fixed = sf.WSI(CMU_TIFF, 128, 256, mpp=0.499)
    ref = sf.WSI(CMU, 128, 256)
    assert fixed.mpp_source == "override"
    np.testing.assert_array_equal(fixed.coords, ref.coords)
    a = np.concatenate([t for t, _ in fixed.tiles()]).astype(float)
    b = np.concatenate([t for t, _ in ref.tiles()]).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    assert psnr > 30  # re-encoded JPEG of the same pixels


def test_pixel_exact_level0_against_openslide():
    wsi = sf.WSI(CMU, 256, 256 * 0.499)  # extent 256 at level 0: no resize
    assert wsi.full_extract_px == 256 and not wsi.level_choice.needs_resize
    osr = openslide.OpenSlide(str(CMU))
    n = 0
    for tiles, coords in wsi.tiles(batch_size=7):
        for tile, (x, y) in zip(tiles, coords):
            ref = np.asarray(osr.read_region((int(x), int(y)), 0, (256, 256)))[..., :3]
            np.testing.assert_array_equal(tile, ref)
            n += 1
    assert n == len(wsi) == 88


def test_pixel_exact_resized_against_openslide():
    wsi = sf.WSI(CMU, 128, 256)
    osr = openslide.OpenSlide(str(CMU))
    tiles = np.concatenate([t for t, _ in wsi.tiles(batch_size=6)])
    for i in (0, 7, 19):
        x, y = wsi.coords[i]
        ref = np.asarray(osr.read_region((int(x), int(y)), 0, (513, 513)))[..., :3]
        ref = cv2.resize(np.ascontiguousarray(ref), (128, 128), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(tiles[i], ref)
        np.testing.assert_array_equal(wsi.read_tile(i), ref)


def test_dicom_copy_gives_same_grid_and_pixels():
    svs = sf.WSI(CMU, 128, 256).qc("otsu")
    dcm = sf.WSI(CMU_DICOM, 128, 256).qc("otsu")
    assert dcm.name == "CMU-1-Small-Region-dicom"
    np.testing.assert_array_equal(svs.grid, dcm.grid)
    a = np.concatenate([t for t, _ in svs.tiles()])
    b = np.concatenate([t for t, _ in dcm.tiles()])
    np.testing.assert_array_equal(a, b)


def test_backends_agree_and_explicit_choice():
    ts = sf.WSI(CMU, 128, 256, backend="tiffslide")
    assert ts.backend == "tiffslide"
    a = ts.read_tile(3).astype(int)
    b = sf.WSI(CMU, 128, 256, backend="openslide").read_tile(3).astype(int)
    assert np.abs(a - b).mean() < 1.0
    with pytest.raises(errors.UnsupportedSlideError, match="unknown backend"):
        sf.WSI(CMU, 128, 256, backend="nope")
    with pytest.raises(errors.UnsupportedSlideError, match="openslide"):
        sf.WSI(QPTIFF, 128, 256, backend="openslide")


def test_channel_rules():
    with pytest.raises(errors.UnsupportedChannelsError, match="small_vectra.qptiff"):
        sf.WSI(QPTIFF, 128, 256)
    ndpi = sf.WSI(NDPI, 128, 128)  # fluorescence rendered to RGB by the scanner: read as stored
    tile = ndpi.read_tile(len(ndpi) // 2)
    assert tile.shape == (128, 128, 3) and tile.dtype == np.uint8


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(CMU.read_bytes()[:5000])
    with pytest.raises(errors.SlideError, match="broken.svs"):
        sf.WSI(bad, 128, 256)
    with pytest.raises(errors.SlideNotFoundError, match="missing.svs"):
        sf.WSI(tmp_path / "missing.svs", 128, 256)
    assert issubclass(errors.MissingMPPError, errors.SlideflowError)


def test_synthetic_pyramid_level_choice(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    base = np.asarray(openslide.OpenSlide(str(CMU)).read_region((0, 0), 0, (2048, 2048)))[..., :3]
    base = np.ascontiguousarray(np.tile(base, (2, 2, 1)))  # 4096 x 4096 from real pixels
    path = tmp_path / "pyramid.tif"
    levels = [base] + [cv2.resize(base, (4096 // d,) * 2, interpolation=cv2.INTER_AREA)
                       for d in (2, 4)]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, lv in enumerate(levels):
            res = 1e4 / (0.25 * 2**i)  # pixels per cm
            tw.write(lv, tile=(256, 256), photometric="rgb", compression=None,
                     resolution=(res, res), resolutionunit="CENTIMETER",
                     subfiletype=1 if i else 0)
    wsi = sf.WSI(path, 256, 128)  # 0.5 µm/px target = level 1 exactly
    assert len(wsi.levels) == 3 and wsi.mpp == pytest.approx(0.25)
    assert (wsi.level_choice.level, wsi.level_choice.needs_resize) == (1, False)
    tile = wsi.read_tile(0)
    np.testing.assert_array_equal(tile, levels[1][:256, :256])
    wsi3 = sf.WSI(path, 256, 192)  # 0.75 µm/px: read level 1 and downsample 384 -> 256
    assert (wsi3.level_choice.level, wsi3.level_choice.read_px) == (1, 384)
    ref = cv2.resize(levels[1][:384, :384], (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(wsi3.read_tile(0), ref)
    wsi_up = pytest.raises(errors.SlideError, sf.WSI, path, 256, 32)  # would upsample
    assert "upsampling" in str(wsi_up.value)


def _geojson(path, polygons):
    feats = [{"type": "Feature", "properties": {"classification": {"name": "tumor"}},
              "geometry": g} for g in polygons]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def test_roi_geojson_filtering(tmp_path):
    # left half of the slide with a hole around tile (row 2, col 0)
    outer = [[0, 0], [1110, 0], [1110, 2967], [0, 2967], [0, 0]]
    hole = [[100, 1100], [400, 1100], [400, 1400], [100, 1400], [100, 1100]]
    roi = _geojson(tmp_path / "s.geojson", [{"type": "Polygon", "coordinates": [outer, hole]}])
    wsi = sf.WSI(CMU, 128, 256, rois=roi)
    assert wsi.roi_method == "inside" and wsi.rois[0].label == "tumor"
    # centres at x = 256.5, 769.5 (< 1110) are inside; tile (2, 0) centre (256.5, 1282.5) in hole
    expected = np.zeros((5, 4), bool)
    expected[:, :2] = True
    expected[2, 0] = False
    np.testing.assert_array_equal(wsi.grid, expected)
    out = sf.WSI(CMU, 128, 256, rois=roi, roi_method="outside")
    np.testing.assert_array_equal(out.grid, ~expected)
    ign = sf.WSI(CMU, 128, 256, rois=roi, roi_method="ignore")
    assert len(ign) == 20
    # column 2 (x 1026..1539) is 16% inside; tile (2, 0) is 66% inside (34% in the hole)
    frac = sf.WSI(CMU, 128, 256, rois=roi, roi_filter_method=0.1)
    loose = expected.copy()
    loose[:, 2] = loose[2, 0] = True
    np.testing.assert_array_equal(frac.grid, loose)
    strict = sf.WSI(CMU, 128, 256, rois=roi, roi_filter_method=0.9)
    np.testing.assert_array_equal(strict.grid, expected)


def test_roi_csv_and_multipolygon(tmp_path):
    csv = tmp_path / "s.csv"
    rows = ["ROI_name,X_base,Y_base"] + [f"r1,{x},{y}" for x, y in
                                          [(0, 0), (600, 0), (600, 600), (0, 600)]]
    csv.write_text("\n".join(rows) + "\n")
    wsi = sf.WSI(CMU, 128, 256, rois=csv)
    assert wsi.coords.tolist() == [[0, 0]]
    mp = {"type": "MultiPolygon", "coordinates": [
        [[[0, 0], [600, 0], [600, 600], [0, 600], [0, 0]]],
        [[[1600, 2200], [2220, 2200], [2220, 2967], [1600, 2967], [1600, 2200]]]]}
    wsi = sf.WSI(CMU, 128, 256, rois=_geojson(tmp_path / "m.geojson", [mp]))
    assert wsi.coords.tolist() == [[0, 0], [1539, 2052]]
    with pytest.raises(errors.ROIError, match="bad.csv"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        sf.WSI(CMU, 128, 256, rois=tmp_path / "bad.csv")


def test_whitespace_grayspace_filters():
    wsi = sf.WSI(CMU, 128, 256)
    wsi.filter_tiles(whitespace_fraction=0.6, whitespace_threshold=230)
    kept_ws = len(wsi)
    assert 0 < kept_ws < 20
    wsi.filter_tiles(grayspace_fraction=0.6, grayspace_threshold=0.05)
    kept_gs = len(wsi)
    assert 0 < kept_gs < 20
    # consistency: the kept tiles really are mostly tissue when read at full resolution
    for tiles, _ in wsi.tiles():
        sat = np.stack([cv2.cvtColor(t, cv2.COLOR_RGB2HSV)[..., 1] for t in tiles]) / 255.0
        assert ((sat < 0.05).mean(axis=(1, 2)) <= 0.75).all()
    wsi.filter_tiles()
    assert len(wsi) == 20


def test_tiles_batches_order_and_edge_tiles():
    wsi = sf.WSI(CMU, 128, 256)
    batches = list(wsi.tiles(batch_size=6))
    assert [len(b) for b, _ in batches] == [6, 6, 6, 2]
    np.testing.assert_array_equal(np.concatenate([c for _, c in batches]), wsi.coords)
    edge = sf.WSI(CMU, 128, 256, use_edge_tiles=True)
    assert len(edge) == 30
    last = edge.read_tile(29)  # overhangs the bottom-right corner: white padding
    assert (last[-5:, -5:] == 255).all()


def test_early_termination_joins_threads():
    wsi = sf.WSI(CMU, 64, 64)
    before = threading.active_count()
    it = wsi.tiles(batch_size=4, num_threads=3)
    next(it)
    it.close()
    assert threading.active_count() == before


def test_preview_and_thumbnail(tmp_path):
    wsi = sf.WSI(CMU, 128, 256).qc("otsu")
    thumb = wsi.thumbnail(width=300)
    assert thumb.size == (300, round(2967 * 300 / 2220))
    img = wsi.preview(width=400)
    assert img.size[0] == 400
    arr = np.asarray(img)
    assert ((arr[..., 1] == 160) & (arr[..., 0] == 0)).sum() > 100  # green tile boxes drawn
    img.save(tmp_path / "p.png")


def test_import_is_lazy_and_fast():
    code = ("import time, sys; t=time.perf_counter(); import slideflow as sf; "
            "dt=time.perf_counter()-t; print(dt, 'torch' in sys.modules, 'openslide' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, torch_loaded, os_loaded = out.stdout.split()
    assert float(dt) < 0.5 and torch_loaded == "False" and os_loaded == "False"


def test_one_slide_rule_multiframe_dcm_next_to_slides(tmp_path, slides):
    """A folder holding one multi-frame .dcm next to other slides is a folder of slides; a
    folder of several DICOM instances is one slide (the same rule for every entry point)."""
    from slideflow.slide import expand_slides, find_slides, is_dicom_folder, is_slide

    from conftest import DICOM_CAMELYON

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in (CMU, DICOM_CAMELYON):
        (mixed / p.name).symlink_to(p)
    (mixed / "dicom").symlink_to(CMU_DICOM)
    assert not is_slide(mixed) and not is_dicom_folder(mixed)
    want = [mixed / CMU.name, mixed / "dicom", mixed / DICOM_CAMELYON.name]
    assert sorted(find_slides(mixed)) == sorted(want)
    assert sorted(expand_slides([mixed], recursive=False)) == sorted(want)
    assert is_slide(CMU_DICOM) and expand_slides([CMU_DICOM]) == [CMU_DICOM]
    # the repository's own slide folder: seven slides, the DICOM instances as one
    found = expand_slides([slides], recursive=False)
    assert slides not in found and CMU_DICOM in found and DICOM_CAMELYON in found
    assert len(found) == 7


def test_cli_features_on_the_test_slide_folder_lists_each_slide(slides):
    """`slideflow features <slides>` plans one job per slide (was one DICOM job for it all)."""
    from slideflow.cli import _jobs

    names = sorted(j.name for j in _jobs([slides], None, False, None, None))
    assert names == sorted(["CMU-1-Small-Region", "CMU-1-Small-Region-dicom",
                            "CMU-1-Small-Region.jpeg", "multiframe_camelyon_challenge_image",
                            "small_vectra", "tcga-cr-7395-01a-01-ts1", "test3-DAPI-2-387"])
