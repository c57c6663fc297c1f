"""One tile-geometry parser (`TileGeometry`): sf.WSI, Dataset and the CLI say the same thing
about the same bad geometry, and a `TileGeometry` passed in works like its two numbers."""

from __future__ import annotations

import pytest

import slideflow as sf
from slideflow.errors import DatasetError, InvalidArgumentError
from slideflow.project.dataset import Dataset
from slideflow.slide.geometry import TileGeometry

from conftest import CMU

# (Python tile_px, tile_um), the same on the command line, and the one message all three give
BAD = [
    ((0, 100.0), ("0", "100"), "tile_px must be an integer >= 1, got 0"),
    ((256, -1.0), ("256", "-1"), "tile_um must be a finite number > 0, got -1.0"),
    ((256, "-1"), ("256", "-1.0"), "tile_um must be a finite number > 0, got -1.0"),
    ((256, "abc"), ("256", "abc"), "tile_um='abc': give microns (e.g. 256) or a magnification "
                                   "string like '20x', '10x' or '2.5x'"),
    ((256, "0x"), ("256", "0x"), "tile_um='0x': magnification must be positive, got 0.0"),
]


def _cli_error(capsys, *args: str) -> tuple[int, str]:
    from slideflow.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("py, cli, message", BAD)
def test_same_message_from_wsi_dataset_and_cli(py, cli, message, cmu_slides_project, capsys,
                                              tmp_path):
    with pytest.raises(InvalidArgumentError) as wsi_err:
        sf.WSI(CMU, *py)
    with pytest.raises(InvalidArgumentError) as ds_err:
        cmu_slides_project.dataset(*py)
    with pytest.raises(InvalidArgumentError) as with_err:
        cmu_slides_project.dataset().with_geometry(*py)
    code, err = _cli_error(capsys, "preview", str(CMU), "--tile-px", cli[0], "--tile-um", cli[1],
                           "-o", str(tmp_path / "p.png"))
    assert str(wsi_err.value) == str(ds_err.value) == str(with_err.value) == message
    assert (code, err) == (2, f"error: {message}")
    assert not (tmp_path / "p.png").exists()


def test_wsi_takes_a_tile_geometry(slides):
    geo = TileGeometry.parse(128, 256)
    by_geo, by_numbers = sf.WSI(CMU, geo), sf.WSI(CMU, 128, 256)
    assert by_geo.geometry is geo and by_numbers.geometry == geo
    assert (by_geo.tile_px, by_geo.tile_um, by_geo.tile_microns) == (128, 256, 256.0)
    assert len(by_geo) == len(by_numbers) == 20
    assert (by_geo.coords == by_numbers.coords).all()
    assert (by_geo.read_tile(3) == by_numbers.read_tile(3)).all()
    strided = sf.WSI(CMU, geo, stride_div=2)
    assert strided.stride_div == 2 and len(strided) > len(by_geo)
    mag = sf.WSI(CMU, TileGeometry.parse(128, "10x"))  # 10x = 1 um/px: 128 um
    assert (mag.tile_um, mag.tile_microns) == ("10x", 128.0)


def test_wsi_keeps_slideflow3_spellings(slides):
    assert sf.WSI(CMU, 128, "10x").tile_microns == 128.0
    assert sf.WSI(CMU, 128, 256.0, 1).geometry == TileGeometry(128, 256.0)
    with pytest.raises(InvalidArgumentError, match="tile_um=5 given with a TileGeometry"):
        sf.WSI(CMU, TileGeometry.parse(128, 256), 5)
    with pytest.raises(InvalidArgumentError, match="tile_um must be a finite number > 0, got None"):
        sf.WSI(CMU, 128)


def test_dataset_takes_a_tile_geometry(cmu_slides_project):
    geo = TileGeometry.parse(256, "20x")
    ds = cmu_slides_project.dataset(geo)
    same = cmu_slides_project.dataset(256, "20x")
    assert ds.geometry is geo and same.geometry == geo
    assert (ds.tile_px, ds.tile_um, ds.label) == (256, "20x", same.label) == (256, "20x",
                                                                            "256px_20x")
    assert ds.slides() == same.slides() == ["CMU-1-Small-Region"]
    moved = ds.with_geometry(TileGeometry.parse(128, 64))
    assert (moved.tile_px, moved.tile_um, moved.label) == (128, 64, "128px_64um")
    assert cmu_slides_project.dataset().geometry is None
    with pytest.raises(DatasetError, match="give both tile_px and tile_um"):
        cmu_slides_project.dataset(256)
    with pytest.raises(DatasetError, match="give both tile_px and tile_um"):
        Dataset(cmu_slides_project.load_sources(), tile_um=128)


def test_project_extract_tiles_takes_a_tile_geometry(cmu_slides_project):
    summary = cmu_slides_project.extract_tiles(TileGeometry.parse(128, 256), qc=None,
                                               report=False, progress=False)
    assert summary.done == ["CMU-1-Small-Region"]
    assert summary["CMU-1-Small-Region"].tiles == len(sf.WSI(CMU, 128, 256)) == 20
    ds = cmu_slides_project.dataset(128, 256)
    assert (ds.tfrecords_folder / "CMU-1-Small-Region.tfrecords").is_file()
