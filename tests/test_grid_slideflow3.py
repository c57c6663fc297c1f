"""The default tile grid is Slideflow 3's: same extent, origin and stride, so same tile centres.

Reference: the 33 tile centres (level-0 `loc_x, loc_y`) that Slideflow 3.0.2 itself wrote for
CMU-1-Small-Region.svs with `extract_tiles(tile_px=256, tile_um=128, qc='otsu')` (mpp 0.499,
full_extract_px 256, grid 8 x 11), copied here as data.
"""

from __future__ import annotations

import numpy as np
import pytest

import slideflow as sf
from slideflow.errors import InvalidArgumentError
from slideflow.slide import geometry

from conftest import CMU

SF3_CENTRES = [
    (640, 2688), (896, 1152), (896, 1408), (896, 1664), (896, 1920), (896, 2176), (896, 2432),
    (896, 2688), (1152, 384), (1152, 640), (1152, 896), (1152, 1152), (1152, 1408),
    (1152, 1664), (1152, 1920), (1152, 2176), (1152, 2432), (1152, 2688), (1408, 640),
    (1408, 896), (1408, 1152), (1408, 1408), (1408, 1664), (1408, 1920), (1408, 2176),
    (1408, 2432), (1408, 2688), (1664, 1152), (1664, 1408), (1664, 1920), (1664, 2176),
    (1664, 2432), (1664, 2688),
]


def _all_centres(grid: geometry.TileGrid) -> set[tuple[int, int]]:
    xs, ys = grid.origins()
    half = grid.extent // 2
    return {(int(x) + half, int(y) + half) for y in ys for x in xs}


def test_extent_truncates_like_slideflow3():
    grid = geometry.make_grid((2220, 2967), 0.499, 256, 128)
    assert grid.extent == 256 == int(128 / 0.499)
    assert grid.stride == 256
    assert grid.shape == (11, 8)  # Slideflow's grid is (x, y) = 8 x 11
    assert set(SF3_CENTRES) <= _all_centres(grid)


def test_round_rule_kept_behind_an_option():
    grid = geometry.make_grid((2220, 2967), 0.499, 256, 128, rule="round")
    assert grid.extent == 257
    assert not set(SF3_CENTRES) & _all_centres(grid)  # the drift the default rule removes
    with pytest.raises(InvalidArgumentError, match="grid_rule"):
        geometry.make_grid((100, 100), 0.5, 16, 8, rule="nearest")


@pytest.mark.parametrize("w, extent, stride_div, n", [
    (1000, 100, 1, 10), (999, 100, 1, 9), (1000, 100, 2, 19), (1000, 100, 3, 28)])
def test_count_and_stride_follow_slideflow3(w, extent, stride_div, n):
    # Slideflow 3: full_stride = int(np.round(extent / stride_div));
    # origins = np.arange(0, (W + 1) - extent, full_stride)
    grid = geometry.make_grid((w, w), 1.0, extent, extent, stride_div)
    stride = int(np.round(extent / stride_div))
    expect = np.arange(0, (w + 1) - extent, stride)
    assert grid.stride == stride and len(expect) == n
    np.testing.assert_array_equal(grid.origins()[0], expect)


def test_edge_tiles_follow_slideflow3():
    # with edge tiles Slideflow 3 places origins up to and including the edge
    grid = geometry.make_grid((1000, 950), 1.0, 100, 100, use_edge_tiles=True)
    np.testing.assert_array_equal(grid.origins()[0], np.arange(0, 1001, 100))
    np.testing.assert_array_equal(grid.origins()[1], np.arange(0, 951, 100))
    old = geometry.make_grid((1000, 950), 1.0, 100, 100, use_edge_tiles=True, rule="round")
    assert old.shape == (10, 10)


def test_wsi_centres_match_slideflow3():
    import slideflow as sf

    wsi = sf.WSI(CMU, 256, 128)
    assert wsi.full_extract_px == 256 and wsi.grid_rule == "slideflow3"
    centres = {tuple(c) for c in (wsi.coords + 128).tolist()}
    assert set(SF3_CENTRES) <= centres
    wsi.qc("otsu")
    kept = {tuple(c) for c in (wsi.coords + 128).tolist()}
    # Otsu runs on a 4 µm/px image here and on the full-resolution level in Slideflow 3:
    # 31 of its 33 tiles are kept here too, plus one it drops (see docs/porting.md)
    assert len(kept & set(SF3_CENTRES)) == 31 and len(kept - set(SF3_CENTRES)) == 1
    # the resolution is the whole difference: the same Otsu and the same 0.4 tissue rule on the
    # full-resolution image (Slideflow 3's choice for this one-level slide) keep its 33 exactly
    from slideflow.slide import tissue

    full = wsi.reader.read_level_scaled(0, wsi.dimensions)
    fractions = tissue.tile_fractions(tissue.otsu_mask(full), wsi.grid_spec, 1.0)
    on_full = {tuple(c) for c in (wsi.grid_spec.coords_of(fractions >= 0.4) + 128).tolist()}
    assert on_full == set(SF3_CENTRES)
    old = sf.WSI(CMU, 256, 128, grid_rule="round")
    assert old.full_extract_px == 257


def test_resume_keys_see_the_grid_rule(cmu_slides_project, tmp_path):
    """A TFRecord or bag folder made under the other rule is never reused as current."""
    quiet = dict(report=False, progress=False)
    ds = cmu_slides_project.dataset(64, 128)
    old = ds.extract_tiles(qc="otsu", grid_rule="round", **quiet)
    assert old["CMU-1-Small-Region"].status == "done"
    new = ds.extract_tiles(qc="otsu", **quiet)
    assert new.done == ["CMU-1-Small-Region"] and "grid_rule" in new["CMU-1-Small-Region"].reason
    (tfr,) = ds.tfrecords()
    from slideflow.io.tfrecord import TFRecord

    locs = {tuple(c) for c in TFRecord(tfr).locations.tolist()}
    assert locs <= {(x + 128, y + 128) for x in range(0, 2220, 256) for y in range(0, 2967, 256)}
    assert set(SF3_CENTRES) & locs
    ext = sf.build_feature_extractor("efficientnet_lite0_imagenet")
    ds.generate_feature_bags(ext, tmp_path / "bags", source="slides", grid_rule="round",
                             progress=False)
    with pytest.raises(sf.errors.BagsConfigMismatchError, match="grid_rule"):
        ds.generate_feature_bags(ext, tmp_path / "bags", source="slides", progress=False)
