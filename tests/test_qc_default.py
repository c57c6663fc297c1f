"""One QC default (slideflow.selection.DEFAULT_QC) for extraction, bags from slides and
TFRecords and the CLI; each bag records the tile selection it was made with."""

from __future__ import annotations

import inspect
import json

import pytest

import slideflow as sf
from slideflow.io.bags import read_bag_meta
from slideflow.selection import DEFAULT_QC

from conftest import CMU, CMU_TIFF

TILE_PX, TILE_UM = 112, 224


def test_cli_and_python_share_the_default():
    from slideflow import cli, cli_encode

    assert DEFAULT_QC == "otsu"
    for fn in (cli.features, cli.extract_tiles, cli.preview, cli_encode.encode_slide,
               cli_encode.encode_patient):
        assert inspect.signature(fn).parameters["qc"].default == DEFAULT_QC, fn.__name__


@pytest.fixture(scope="module")
def ext():
    return sf.build_feature_extractor("efficientnet_lite0_imagenet", batch_size=8)


def test_slide_rejected_by_extraction_qc_is_not_embedded_unfiltered(tmp_path, ext, slides):
    """CMU's JPEG TIFF has no tile left after Otsu: extract_tiles (default QC) rejects it, and
    the bags (TFRecord for CMU, slide for the TIFF) apply the same QC instead of embedding all
    of its tiles; each bag records the selection it was made with."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for p in (CMU, CMU_TIFF):
        (folder / p.name).symlink_to(p)
    P = sf.create_project(tmp_path / "proj", slides=folder)
    ds = P.dataset(TILE_PX, TILE_UM)
    extracted = ds.extract_tiles(report=False, progress=False)
    assert CMU_TIFF.name.split(".")[0] + ".jpeg" in extracted.failed
    out = tmp_path / "bags"
    report = ds.generate_feature_bags(ext, out, progress=False)
    assert list(report.done) == ["CMU-1-Small-Region"]
    assert "CMU-1-Small-Region.jpeg" in report.failed  # no bag of unfiltered tiles
    assert "0 tiles after tile selection (qc='otsu')" in report.failed["CMU-1-Small-Region.jpeg"]
    assert not (out / "CMU-1-Small-Region.jpeg.pt").exists()
    otsu = sf.WSI(CMU, TILE_PX, TILE_UM).qc("otsu")
    assert len(sf.io.read_bag(out / "CMU-1-Small-Region.pt")) == len(otsu) < 24
    meta = read_bag_meta(out, "CMU-1-Small-Region")
    assert meta["source"] == "tfrecord" and meta["tile_selection"]["qc"] == "otsu"
    cfg = json.loads((out / "bags_config.json").read_text())
    assert cfg["provenance"]["tile_selection"]["qc"] == "otsu"
    # from the slide, QC off on request: the bag says so
    off = ds.generate_feature_bags(ext, tmp_path / "off", source="slides", qc=None,
                                   progress=False)
    assert off.tiles == 24 + len(sf.WSI(CMU_TIFF, TILE_PX, TILE_UM))
    meta = read_bag_meta(tmp_path / "off", "CMU-1-Small-Region")
    assert meta["source"] == "slide" and meta["tile_selection"]["qc"] is None


def test_porting_guide_states_the_default():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "porting.md").read_text()
    assert f"`qc` defaults to `'{DEFAULT_QC}'`" in text
