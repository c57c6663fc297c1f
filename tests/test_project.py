"""Project: create/load round trip, datasets.json and settings.json layout, annotations rules."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import slideflow as sf
from slideflow.annotations import read_annotations
from slideflow.errors import ProjectError
from slideflow.sources import load_sources, resolve_path

from conftest import CMU, CMU_DICOM, NDPI, TCGA_J2K


def _slide_folder(tmp: Path, *paths: Path, sub: dict[str, Path] | None = None) -> Path:
    """Symlink real slides into tmp/slides (optionally some into subfolders)."""
    folder = tmp / "slides"
    folder.mkdir()
    for p in paths:
        (folder / p.name).symlink_to(p)
    for subdir, p in (sub or {}).items():
        (folder / subdir).mkdir(parents=True, exist_ok=True)
        (folder / subdir / p.name).symlink_to(p)
    return folder


def test_create_load_round_trip(tmp_path: Path, slides: Path) -> None:
    folder = _slide_folder(tmp_path, CMU, CMU_DICOM, sub={"deep/er": TCGA_J2K})
    P = sf.create_project(tmp_path / "proj", name="Lung", slides=folder)
    settings = json.loads((tmp_path / "proj" / "settings.json").read_text())
    assert settings == {"name": "Lung", "annotations": "./annotations.csv",
                        "dataset_config": "./datasets.json", "sources": ["Lung"],
                        "models_dir": "./models", "eval_dir": "./eval"}
    cfg = json.loads((tmp_path / "proj" / "datasets.json").read_text())
    assert set(cfg["Lung"]) == {"slides", "roi", "tiles", "tfrecords"}  # Slideflow key names
    assert cfg["Lung"]["slides"] == str(folder)
    assert cfg["Lung"]["tfrecords"] == str(tmp_path / "proj" / "tfrecords" / "Lung")

    # no annotations given: one row per slide found (recursively, DICOM folder = one slide)
    ann = pd.read_csv(P.annotations, dtype=str)
    names = ["CMU-1-Small-Region", "CMU-1-Small-Region-dicom", "tcga-cr-7395-01a-01-ts1"]
    assert list(ann.columns) == ["patient", "slide"]
    assert sorted(ann["slide"]) == names and list(ann["patient"]) == list(ann["slide"])

    Q = sf.load_project(tmp_path / "proj")
    assert Q.name == "Lung" and Q.sources == ["Lung"]
    assert Q.load_sources() == P.load_sources()
    pd.testing.assert_frame_equal(Q.read_annotations(), P.read_annotations())
    ds = Q.dataset()
    assert ds.slides() == names
    assert ds.slide_paths(as_dict=True)["tcga-cr-7395-01a-01-ts1"] == \
        folder / "deep" / "er" / TCGA_J2K.name
    assert sf.Project(tmp_path / "proj").settings == Q.settings
    assert "slides=3" in repr(Q) and "annotations=3" in repr(Q)
    assert "Lung" in Q._repr_html_()


def test_annotations_copied_and_read_as_text(tmp_path: Path, slides: Path) -> None:
    folder = _slide_folder(tmp_path, CMU, NDPI)
    csv = tmp_path / "labels.csv"
    csv.write_text("patient,slide,code,grade\n007,CMU-1-Small-Region,NA,1.0\n"
                   "008,test3-DAPI-2-387,,2\n")
    P = sf.create_project(tmp_path / "p", annotations=csv, slides=folder)
    assert P.annotations.read_bytes() == csv.read_bytes()  # copied in unchanged
    df = P.read_annotations()
    assert df.loc[0, "patient"] == "007" and df.loc[0, "code"] == "NA"  # no type guessing
    assert df.loc[1, "code"] == "" and df.loc[0, "grade"] == "1.0"
    ds = P.dataset()
    assert ds.patients() == {"CMU-1-Small-Region": "007", "test3-DAPI-2-387": "008"}


def test_duplicate_slides_error_names_them(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("patient,slide\np1,A\np2,B\np3,A\np4,C\np5,C\n")
    with pytest.raises(ProjectError, match=r"'A' \(lines 2, 4\).*'C' \(lines 5, 6\)"):
        read_annotations(csv)
    with pytest.raises(ProjectError, match="duplicated"):
        sf.create_project(tmp_path / "p", annotations=csv)
    assert not (tmp_path / "p" / "settings.json").exists()  # nothing half-created


def test_missing_slide_column_names_the_fix(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("patient,slide_id,label\np1,A,x\n")
    with pytest.raises(ProjectError, match="rename column 'slide_id' to 'slide'"):
        read_annotations(csv)
    csv.write_text("patient,label\np1,x\n")
    with pytest.raises(ProjectError, match="add a 'slide' column"):
        read_annotations(csv)
    csv.write_text("slide,label\nA,x\nB,\n")  # no patient column: one patient per slide
    df = read_annotations(csv)
    assert list(df["patient"]) == ["A", "B"]
    csv.write_text("patient,slide\np1,\n")
    with pytest.raises(ProjectError, match="blank 'slide' value on line"):
        read_annotations(csv)


def test_add_source_and_paths(tmp_path: Path, slides: Path) -> None:
    P = sf.create_project(tmp_path / "p", name="X")
    assert P.sources == [] and P.dataset().slides() == []
    folder = _slide_folder(tmp_path, CMU)
    src = P.add_source("site2", slides=folder, tfrecords=tmp_path / "scratch" / "tfr")
    assert src.roi == tmp_path / "p" / "roi" / "site2"
    Q = sf.load_project(tmp_path / "p")
    assert Q.sources == ["site2"]
    assert Q.load_sources()["site2"].tfrecords == tmp_path / "scratch" / "tfr"
    # annotations were written empty at creation; regenerate them from the new source
    Q.create_blank_annotations(overwrite=True)
    assert Q.dataset().slides() == ["CMU-1-Small-Region"]
    with pytest.raises(ProjectError, match="exists"):
        Q.create_blank_annotations()
    with pytest.raises(ProjectError, match="not in"):
        Q.dataset(sources=["nope"])
    # other sources in a shared datasets.json survive an add_source
    cfg = json.loads(Q.dataset_config.read_text())
    cfg["other"] = {"slides": "./elsewhere", "tfrecords": "$ROOT/tfr_other"}
    Q.dataset_config.write_text(json.dumps(cfg))
    Q.add_source("site3", slides=folder)
    every = load_sources(Q.dataset_config, Q.root)
    assert set(every) == {"site2", "site3", "other"}
    assert every["other"].slides == Q.root / "elsewhere"  # relative to the project root
    assert every["other"].tfrecords == Q.root / "tfr_other"
    assert resolve_path(None, Q.root) is None


def test_create_and_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="not a slideflow project"):
        sf.load_project(tmp_path / "nothing")
    sf.create_project(tmp_path / "p")
    with pytest.raises(ProjectError, match="already a project"):
        sf.create_project(tmp_path / "p")
    with pytest.raises(ProjectError, match="already a project"):
        sf.Project(tmp_path / "p", name="again")
    P = sf.Project(tmp_path / "q", name="viaProject")  # Slideflow-style creation
    assert P.name == "viaProject" and sf.load_project(tmp_path / "q").name == "viaProject"
    (tmp_path / "p" / "settings.json").write_text("{broken")
    with pytest.raises(ProjectError, match="unreadable"):
        sf.load_project(tmp_path / "p")


def test_generate_feature_bags_delegates(tmp_path: Path, monkeypatch, slides: Path) -> None:
    from slideflow.dataset import Dataset

    folder = _slide_folder(tmp_path, CMU)
    P = sf.create_project(tmp_path / "p", slides=folder)
    seen = {}

    def fake(dataset, extractor, outdir, **kwargs):  # the project hands over to its dataset
        seen.update(dataset=dataset, extractor=extractor, outdir=outdir, kwargs=kwargs)
        return "report"

    monkeypatch.setattr(Dataset, "generate_feature_bags", fake)
    assert P.generate_feature_bags("ext", tile_px=64, tile_um=64, format="h5") == "report"
    assert seen["outdir"] == P.root / "pt_files" / "ext"
    assert seen["dataset"].slides() == ["CMU-1-Small-Region"] and seen["kwargs"] == {"format": "h5"}


def test_sources_setter_as_in_slideflow3(tmp_path: Path, slides: Path) -> None:
    """Slideflow 3 documents `P.sources` as settable (a list of str), and `add_source` with
    keyword folders; both work here, and a wrong type is a ProjectError."""
    P = sf.create_project(tmp_path / "p", slides=slides)
    P.add_source("extra", slides=slides, roi=None, tiles=None, tfrecords=None, path=None)
    assert P.sources == ["MyProject", "extra"]
    P.sources = ["extra"]
    P.save()
    assert sf.load_project(P.root).sources == ["extra"]
    with pytest.raises(ProjectError, match="list of source names"):
        P.sources = "extra"
