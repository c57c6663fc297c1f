"""Inputs Slideflow users bring: ROI lists, mask images, plain images as slides (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

import slideflow as sf
from slideflow import errors
from slideflow.selection import TileSelection, open_wsi
from slideflow.slide.mask import load_mask
from slideflow.slide.roi import ROI

from conftest import CMU

pytestmark = pytest.mark.usefixtures("slides")

OUTER = [[0, 0], [1110, 0], [1110, 2967], [0, 2967], [0, 0]]
HOLE = [[100, 1100], [400, 1100], [400, 1400], [100, 1400], [100, 1100]]
# the grid of OUTER-with-HOLE at 128 px / 256 um on CMU (4 x 5 tiles of 513 px), centre rule
EXPECTED = np.zeros((5, 4), bool)
EXPECTED[:, :2] = True
EXPECTED[2, 0] = False


def _geojson(path, geoms):
    feats = [{"type": "Feature", "geometry": g, "properties": {"name": f"r{i}"}}
             for i, g in enumerate(geoms)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def _mask(scale: float) -> np.ndarray:
    """OUTER-with-HOLE as a binary image of the whole CMU slide at `scale` px per level-0 px."""
    w, h = round(2220 * scale), round(2967 * scale)
    m = np.zeros((h, w), np.uint8)
    m[:, : round(1110 * scale)] = 255
    m[round(1100 * scale):round(1400 * scale), round(100 * scale):round(400 * scale)] = 0
    return m


# ------------------------------------------------------------------------------- rois=
def test_rois_list_of_paths_mixing_geojson_and_csv(tmp_path):
    left = _geojson(tmp_path / "left.geojson", [{"type": "Polygon", "coordinates": [OUTER]}])
    csv = tmp_path / "corner.csv"
    pts = [(1600, 2200), (2220, 2200), (2220, 2967), (1600, 2967)]
    csv.write_text("ROI_name,X_base,Y_base\n" + "".join(f"c,{x},{y}\n" for x, y in pts))
    # Slideflow's list-of-paths spelling (used to raise AttributeError on str.geometry)
    both = sf.WSI(CMU, 128, 256, rois=[str(left), str(csv)])
    assert len(both.rois) == 2
    expected = np.zeros((5, 4), bool)
    expected[:, :2] = True
    expected[4, 3] = True  # centre (1795.5, 2308.5) is in the CSV corner
    np.testing.assert_array_equal(both.grid, expected)
    # ROI objects, alone or mixed with paths, give the same tiles
    objs = sf.WSI(CMU, 128, 256, rois=both.rois)
    np.testing.assert_array_equal(objs.grid, expected)
    mixed = sf.WSI(CMU, 128, 256, rois=[both.rois[0], csv])
    np.testing.assert_array_equal(mixed.grid, expected)
    single = sf.WSI(CMU, 128, 256, rois=both.rois[0])
    assert single.grid[:, :2].all() and not single.grid[:, 2:].any()
    with pytest.raises(TypeError, match="rois"):
        sf.WSI(CMU, 128, 256, rois=[42])


# ------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("scale, suffix", [(0.1, ".png"), (1.0, ".png"), (0.05, ".tif")])
def test_mask_image_as_roi_matches_polygon(tmp_path, scale, suffix):
    path = tmp_path / f"mask{suffix}"
    Image.fromarray(_mask(scale)).save(path)
    wsi = sf.WSI(CMU, 128, 256, rois=path)
    assert wsi.roi_method == "inside"
    np.testing.assert_array_equal(wsi.grid, EXPECTED)
    poly = _geojson(tmp_path / "p.geojson", [{"type": "Polygon", "coordinates": [OUTER, HOLE]}])
    for frac in (0.1, 0.9):  # area rule: column 2 is 16 % inside, tile (2, 0) 66 %
        a = sf.WSI(CMU, 128, 256, rois=path, roi_filter_method=frac)
        b = sf.WSI(CMU, 128, 256, rois=poly, roi_filter_method=frac)
        np.testing.assert_array_equal(a.grid, b.grid)
    out = sf.WSI(CMU, 128, 256, rois=[path], roi_method="outside")
    np.testing.assert_array_equal(out.grid, ~EXPECTED)
    assert out.preview(width=200).size[0] == 200  # traced outline draws


def test_mask_value_conventions(tmp_path):
    m = _mask(0.1)
    Image.fromarray((m > 0).astype(np.uint8)).save(tmp_path / "ones.png")  # 0/1 labels
    Image.fromarray(m > 0).convert("1").save(tmp_path / "bits.png")  # 1-bit
    rgba = np.zeros(m.shape + (4,), np.uint8)
    rgba[..., 3] = m  # transparent outside
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    for name in ("ones.png", "bits.png", "alpha.png"):
        mask = load_mask(tmp_path / name)
        np.testing.assert_array_equal(mask.array, m > 0)
        wsi = sf.WSI(CMU, 128, 256, rois=tmp_path / name)
        np.testing.assert_array_equal(wsi.grid, EXPECTED)


def test_mask_wrong_aspect_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((300, 300), 255, np.uint8)).save(tmp_path / "square.png")
    with pytest.raises(errors.ROIError, match=r"square\.png.*300x300.*2220x2967"):
        sf.WSI(CMU, 128, 256, rois=tmp_path / "square.png")
    with pytest.raises(errors.ROIError, match="square.png"):
        sf.WSI(CMU, 128, 256).qc(tmp_path / "square.png")
    with pytest.raises(errors.ROIError, match="not found"):
        sf.WSI(CMU, 128, 256, rois=tmp_path / "missing.png")


def test_mask_image_as_tissue_mask(tmp_path):
    path = tmp_path / "tissue.png"
    Image.fromarray(_mask(0.1)).save(path)
    wsi = sf.WSI(CMU, 128, 256).qc(path, threshold=0.5)
    # tiles at least half inside the mask: columns 0 and 1, and (2, 0) at 66 %
    np.testing.assert_array_equal(wsi.grid, EXPECTED | (np.arange(5)[:, None] == 2) &
                                  (np.arange(4)[None, :] == 0))
    assert wsi.qc_methods == [str(path)]
    otsu = sf.WSI(CMU, 128, 256).qc("otsu", threshold=0.5).grid
    both = sf.WSI(CMU, 128, 256).qc(["otsu", path], threshold=0.5).grid
    assert both.sum() < otsu.sum()
    assert not both[:, 2:].any()
    # the shared tile-selection options take a mask path (CLI manifest mask_path, bags)
    sel = TileSelection(qc=str(path), qc_threshold=0.5)
    with open_wsi(CMU, 128, 256, sel) as w:
        np.testing.assert_array_equal(w.grid, wsi.grid)
    assert sel.selection_dict()["qc"] == str(path)
    with pytest.raises(ValueError, match="mask image"):
        TileSelection(qc="tissue.txt")


def test_mask_qc_is_recorded_by_content_for_resume(tmp_path):
    """The TFRecord sidecar records a mask by name and content digest (was 'callable:PosixPath'
    for a Path), so a rerun after the mask was edited is not taken for the same request."""
    from slideflow.slide.mask import BinaryMask
    from slideflow.slide.qc import QCSettings

    path = tmp_path / "tissue.png"
    Image.fromarray(_mask(0.1)).save(path)
    first = QCSettings(qc=path).request_record()["qc"]
    assert first.startswith("mask:tissue.png@") and len(first) == len("mask:tissue.png@") + 16
    assert QCSettings(qc=str(path)).request_record()["qc"] == first
    assert QCSettings(qc=["otsu", path]).request_record()["qc"] == ["otsu", first]
    Image.fromarray(_mask(0.2)).save(path)  # the user edits the mask
    assert QCSettings(qc=path).request_record()["qc"] != first
    arr = _mask(0.1) > 0
    a = QCSettings(qc=BinaryMask(arr, name="m")).request_record()["qc"]
    b = QCSettings(qc=BinaryMask(~arr, name="m")).request_record()["qc"]
    assert a.startswith("mask:m@") and a != b


# ------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def region() -> np.ndarray:
    with openslide.OpenSlide(str(CMU)) as s:
        return np.asarray(s.read_region((300, 500), 0, (1200, 1000)).convert("RGB"))


def test_png_as_single_level_slide_is_pixel_exact(tmp_path, region):
    png = tmp_path / "crop.png"
    Image.fromarray(region).save(png)
    with pytest.raises(errors.MissingMPPError, match=r"crop\.png.*records no resolution.*mpp="):
        sf.WSI(png, 128, 64)
    wsi = sf.WSI(png, 128, 128 * 0.5, mpp=0.5)  # extent 128: no resampling
    assert (wsi.backend, wsi.dimensions, len(wsi.levels)) == ("image", (1200, 1000), 1)
    assert len(wsi) == 9 * 7
    tiles = np.concatenate([t for t, _ in wsi.tiles(batch_size=16)])
    for i in (0, 17, 62):
        x, y = wsi.coords[i]
        np.testing.assert_array_equal(tiles[i], region[y:y + 128, x:x + 128])
    # downsampled tiles agree with the same grid read from the TIFF copy by tiffslide
    tif = tmp_path / "crop.tif"
    tifffile.imwrite(tif, region, resolution=(20000, 20000), resolutionunit="CENTIMETER")
    a = sf.WSI(png, 64, 128, mpp=0.5)
    b = sf.WSI(tif, 64, 128)
    assert b.mpp == pytest.approx(0.5) and b.backend == "tiffslide"
    np.testing.assert_array_equal(a.coords, b.coords)
    ta = np.concatenate([t for t, _ in a.tiles()]).astype(int)
    tb = np.concatenate([t for t, _ in b.tiles()]).astype(int)
    assert np.abs(ta - tb).max() <= 1
    c = sf.WSI(tif, 64, 128, backend="image")  # a plain TIFF through the image backend
    assert c.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(np.concatenate([t for t, _ in c.tiles()]), ta)


def test_image_resolution_from_file(tmp_path, region):
    png = tmp_path / "phys.png"
    Image.fromarray(region).save(png, dpi=(50800, 50800))  # 2,000,000 px/m = 0.5 um/px
    assert sf.WSI(png, 64, 32).mpp == pytest.approx(0.5)
    jpg = tmp_path / "dens.jpg"
    Image.fromarray(region).save(jpg, dpi=(50800, 50800), quality=95)
    wsi = sf.WSI(jpg, 64, 32)
    assert wsi.mpp == pytest.approx(0.5) and wsi.dimensions == (1200, 1000)
    assert np.abs(wsi.read_tile(0).astype(int) - region[:64, :64]).mean() < 4  # JPEG q95
    editor = tmp_path / "editor.png"
    Image.fromarray(region).save(editor, dpi=(72, 72))
    with pytest.raises(errors.MissingMPPError, match=r"editor\.png.*72(\.01)? px per inch.*mpp="):
        sf.WSI(editor, 64, 32)
    assert sf.WSI(editor, 64, 32, mpp=0.5).mpp_source == "override"
    with pytest.raises(errors.UnsupportedSlideError, match="bad.png"):
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        sf.WSI(tmp_path / "bad.png", 64, 32, mpp=0.5)


def test_roi_objects_keep_labels():
    from shapely.geometry import box

    roi = ROI("a", box(0, 0, 600, 600), "tumor")
    wsi = sf.WSI(CMU, 128, 256, rois=[roi])
    assert wsi.coords.tolist() == [[0, 0]] and wsi.rois[0].label == "tumor"
