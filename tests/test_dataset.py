"""Dataset: filters, labels, patients, ROIs, TFRecord manifest, min_tiles, summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import slideflow as sf
from slideflow.dataset import Dataset
from slideflow.errors import DatasetError
from slideflow.io import imgcodec
from slideflow.io.tfrecord import TFRecordWriter

from conftest import CMU, CMU_DICOM, NDPI

ANN = """patient,slide,site,subtype,age,mpp
p1,CMU-1-Small-Region,A,LUAD,61,
p1,CMU-1-Small-Region-dicom,B,LUSC,61,0.5
p2,test3-DAPI-2-387,A,,70.5,
p3,ghost,A,LUAD,40,
p4,tfr_only,B,LUSC,55,
"""


def _fake_tfrecord(path: Path, slide: str, n: int) -> None:
    tile = np.full((8, 8, 3), 200, np.uint8)
    with TFRecordWriter(path) as w:
        for i in range(n):
            w.write(imgcodec.encode(tile, "png"), slide, 10 * i, 5)


@pytest.fixture()
def project(tmp_path: Path, slides: Path):
    folder = tmp_path / "slides"
    folder.mkdir()
    for p in (CMU, CMU_DICOM, NDPI):
        (folder / p.name).symlink_to(p)
    csv = tmp_path / "ann.csv"
    csv.write_text(ANN)
    P = sf.create_project(tmp_path / "p", name="S", annotations=csv, slides=folder)
    tfr = P.load_sources()["S"].tfrecords / "64px_64um"
    tfr.mkdir(parents=True)
    _fake_tfrecord(tfr / "CMU-1-Small-Region.tfrecords", "CMU-1-Small-Region", 5)
    _fake_tfrecord(tfr / "tfr_only.tfrecords", "tfr_only", 2)
    _fake_tfrecord(tfr / "not_annotated.tfrecords", "not_annotated", 3)
    return P


def test_slides_presence_and_missing(project) -> None:
    ds = project.dataset(64, 64)
    # annotated + present (slide file or TFRecord); 'ghost' is nowhere; 'not_annotated' has no row
    assert ds.slides() == ["CMU-1-Small-Region", "CMU-1-Small-Region-dicom", "test3-DAPI-2-387",
                           "tfr_only"]
    assert ds.missing_slides() == ["ghost"]
    assert len(ds) == 4 and "tfr_only" in ds
    assert [p.name for p in ds.slide_paths()] == [CMU.name, CMU_DICOM.name, NDPI.name]
    assert ds.patients()["CMU-1-Small-Region-dicom"] == "p1"
    r = repr(ds)
    assert "slides=4" in r and "patients=3" in r and "tfrecords=2" in r and "missing=1" in r
    assert "TFRecords" in ds._repr_html_()
    summary = ds.summary()
    assert list(summary["slide"]) == ["CMU-1-Small-Region", "CMU-1-Small-Region-dicom",
                                      "test3-DAPI-2-387", "ghost", "tfr_only"]
    assert summary.set_index("slide").loc["ghost", "in_dataset"] == False  # noqa: E712
    assert summary.set_index("slide").loc["CMU-1-Small-Region", "tiles"] == 5
    # without geometry, TFRecords are not considered
    assert project.dataset().slides() == ["CMU-1-Small-Region", "CMU-1-Small-Region-dicom",
                                          "test3-DAPI-2-387"]


def test_filters_return_new_datasets(project) -> None:
    ds = project.dataset(64, 64)
    a = ds.filter(filters={"site": "A"})
    assert a.slides() == ["CMU-1-Small-Region", "test3-DAPI-2-387"]
    assert ds.slides()[-1] == "tfr_only"  # the original is unchanged
    b = a.filter(filter_blank=["subtype"])
    assert b.slides() == ["CMU-1-Small-Region"]
    c = ds.filter(filters={"subtype": ["LUAD", "LUSC"]}).filter(filters={"subtype": ["LUSC"]})
    assert c.slides() == ["CMU-1-Small-Region-dicom", "tfr_only"]
    assert c.filters == {"subtype": ["LUSC"]}
    assert project.dataset(64, 64, filters={"age": [61]}).slides() == \
        ["CMU-1-Small-Region", "CMU-1-Small-Region-dicom"]
    with pytest.raises(DatasetError, match="'nope' is not in the annotations"):
        ds.filter(filters={"nope": ["x"]})
    assert list(b.annotations["slide"]) == ["CMU-1-Small-Region"]


def test_labels(project) -> None:
    ds = project.dataset(64, 64)
    with pytest.raises(DatasetError, match="blank 'subtype'.*filter_blank"):
        ds.labels("subtype")
    labels, unique = ds.filter(filter_blank="subtype").labels("subtype")
    assert unique == ["LUAD", "LUSC"]
    assert labels == {"CMU-1-Small-Region": 0, "CMU-1-Small-Region-dicom": 1, "tfr_only": 1}
    names, _ = ds.filter(filter_blank="subtype").labels("subtype", format="name")
    assert names["tfr_only"] == "LUSC"
    ages, uniq = ds.labels("age", use_float=True)
    assert ages["test3-DAPI-2-387"] == 70.5 and uniq == [55.0, 61.0, 70.5]
    with pytest.raises(DatasetError, match="not numeric"):
        ds.filter(filter_blank="subtype").labels("subtype", use_float=True)
    with pytest.raises(DatasetError, match="no annotation column"):
        ds.labels("missing")


def test_manifest_min_tiles_and_incomplete(project) -> None:
    ds = project.dataset(64, 64)
    assert ds.manifest() == {"CMU-1-Small-Region": 5, "tfr_only": 2}
    assert ds.tfrecords_folder == project.root / "tfrecords" / "S" / "64px_64um"
    assert project.dataset(64, 64, min_tiles=3).slides() == ["CMU-1-Small-Region"]
    assert ds.filter(min_tiles=2).slides() == ["CMU-1-Small-Region", "tfr_only"]
    # an extraction that never finished: not listed, not counted
    side = ds.tfrecords_folder / "tfr_only.extract.json"
    side.write_text(json.dumps({"complete": False}))
    assert ds.manifest() == {"CMU-1-Small-Region": 5}
    assert len(ds.tfrecords(include_incomplete=True)) == 2
    # temporary leftovers are never TFRecords
    (ds.tfrecords_folder / "x.tfrecords.tmp-abc").write_bytes(b"junk")
    assert len(ds.tfrecords(include_incomplete=True)) == 2
    with pytest.raises(DatasetError, match="tile geometry"):
        project.dataset().tfrecords()


def test_rois_mpp_and_feature_jobs(project) -> None:
    roi = project.load_sources()["S"].roi
    roi.mkdir(parents=True)
    (roi / "CMU-1-Small-Region.csv").write_text("roi_name,x_base,y_base\n")
    (roi / "test3-DAPI-2-387.geojson").write_text("{}")
    ds = project.dataset(64, 64)
    assert ds.rois() == {"CMU-1-Small-Region": roi / "CMU-1-Small-Region.csv",
                         "test3-DAPI-2-387": roi / "test3-DAPI-2-387.geojson"}
    assert ds.annotation_mpp() == {"CMU-1-Small-Region-dicom": 0.5}
    jobs = {j.name: j for j in ds.feature_jobs()}
    assert jobs["CMU-1-Small-Region"].tfrecord is not None  # TFRecord preferred when present
    assert jobs["tfr_only"].slide_path is None
    assert jobs["CMU-1-Small-Region-dicom"].mpp == 0.5
    assert {j.name for j in ds.feature_jobs("tfrecords")} == {"CMU-1-Small-Region", "tfr_only"}
    assert all(j.tfrecord is None for j in ds.feature_jobs("slides"))


def test_dataset_without_project(tmp_path: Path, slides: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / CMU.name).symlink_to(CMU)
    cfg = tmp_path / "datasets.json"
    cfg.write_text(json.dumps({"one": {"slides": str(folder), "tfrecords": "./tfr"}}))
    ds = Dataset(cfg, "one", 128, "20x")
    assert ds.label == "128px_20x" and ds.slides() == ["CMU-1-Small-Region"]
    assert ds.tfrecords_folder == tmp_path / "tfr" / "128px_20x"
    with pytest.raises(DatasetError, match="unknown source"):
        Dataset(cfg, "two", 128, "20x")
    with pytest.raises(DatasetError, match="both tile_px and tile_um"):
        Dataset(cfg, None, 128)
