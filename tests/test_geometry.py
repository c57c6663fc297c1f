import numpy as np
import pytest

from slideflow.slide import geometry as g
from slideflow.units import tile_um_label


def test_tile_um_parsing():
    assert g.tile_um_to_microns(256, 128) == 128.0
    assert g.tile_um_to_microns(256, "20x") == pytest.approx(128.0)
    assert g.tile_um_to_microns(224, "2.5x") == pytest.approx(224 * 4.0)
    with pytest.raises(ValueError, match="magnification"):
        g.tile_um_to_microns(256, "twenty")
    assert tile_um_label(256, 128) == "256px_128um"
    assert tile_um_label(256, 128.0) == "256px_128um"
    assert tile_um_label(256, 302.5) == "256px_302.5um"
    assert tile_um_label(256, "20X") == "256px_20x"


def test_choose_level_tolerance_rule():
    ds = [1.0, 2.0005, 4.001, 16.0]
    # exact level within 5%: read as-is
    c = g.choose_level(ds, 512, 256)
    assert (c.level, c.read_px, c.needs_resize) == (1, 256, False)
    # 4% off: still as-is (no resampling)
    c = g.choose_level(ds, 256 * 2.08, 256)
    assert (c.level, c.needs_resize) == (1, False)
    # 3x: read level 1 (finer) and downsample
    c = g.choose_level(ds, 768, 256)
    assert (c.level, c.read_px, c.needs_resize) == (1, 384, True)
    # between 4 and 16: never pick the coarser level 16 (that would upsample)
    c = g.choose_level(ds, 256 * 10, 256)
    assert c.level == 2 and c.read_px == round(2560 / 4.001)
    with pytest.raises(ValueError, match="upsampling"):
        g.choose_level(ds, 100, 256)


def test_grid_counts_and_coords():
    grid = g.make_grid((2220, 2967), 0.499, 128, 256)
    assert grid.extent == 513 and grid.stride == 513
    assert grid.shape == (5, 4)
    mask = np.zeros(grid.shape, bool)
    mask[1, 2] = mask[4, 0] = True
    assert grid.coords_of(mask).tolist() == [[1026, 513], [0, 2052]]
    half = g.make_grid((2220, 2967), 0.499, 128, 256, stride_div=2)
    assert half.stride == 256 and half.shape == (10, 7)
    edge = g.make_grid((2220, 2967), 0.499, 128, 256, use_edge_tiles=True)
    assert edge.shape == (6, 5)
