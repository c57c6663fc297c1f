"""One manifest reader (slideflow.io.manifest) behind every command and API: paths relative
to the CSV, spacing_at_level_0 and mask_path honoured by features and patient embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import slideflow as sf
import slideflow.embed as embed_mod
from slideflow.io.manifest import ManifestError, read_manifest

from conftest import CMU


@pytest.fixture()
def cohort(tmp_path, slides):
    """cohort/manifest.csv naming its slides and mask relative to itself."""
    folder = tmp_path / "cohort"
    (folder / "wsi").mkdir(parents=True)
    (folder / "wsi" / "a.svs").symlink_to(CMU)
    (folder / "wsi" / "b.svs").symlink_to(CMU)
    tissue = np.zeros((27, 20), np.uint8)  # CMU-1's aspect; tissue: the left half
    tissue[:, :10] = 255
    Image.fromarray(tissue).save(folder / "mask.png")
    manifest = folder / "manifest.csv"
    manifest.write_text("sample_id,image_path,mask_path,spacing_at_level_0,patient_id\n"
                        "a,wsi/a.svs,mask.png,0.25,P1\n"
                        "b,wsi/b.svs,,,P1\n")
    return manifest


def test_reader_resolves_against_the_csv(cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    a, b = read_manifest(cohort)
    assert a.image_path == cohort.parent / "wsi" / "a.svs" and a.image_path.exists()
    assert a.mask_path == cohort.parent / "mask.png" and a.mpp == 0.25
    assert b.mask_path is None and b.mpp is None and b.patient_id == "P1"
    # patient manifests: patient_id required, sample_id optional
    rows = read_manifest([{"patient_id": "Q", "image_path": str(CMU)}],
                         required=("patient_id", "image_path"))
    assert rows[0].sample_id is None and rows[0].patient_id == "Q"
    with pytest.raises(ManifestError, match=r"needs the columns \['patient_id', 'image_path'\]"):
        read_manifest([{"image_path": str(CMU)}], required=("patient_id", "image_path"))


def _record_embed(monkeypatch):
    calls = []

    def fake_embed_slide(path, preprocessing=None, execution=None, sample_id=None,
                         _resolved=None, **kw):
        calls.append((path, sample_id, preprocessing))
        return embed_mod.EmbeddedSlide(sample_id or "x", np.zeros((1, 2), np.float32),
                                       np.full(2, len(calls), np.float32), np.zeros(1),
                                       np.zeros(1), 1, path, 1)

    monkeypatch.setattr(embed_mod, "_resolve", lambda *a, **k: (None, None))
    monkeypatch.setattr(embed_mod, "embed_slide", fake_embed_slide)
    return calls


def test_embed_patients_uses_the_manifest_rules(cohort, tmp_path, monkeypatch):
    """embed_patients read paths relative to the working directory and ignored
    spacing_at_level_0 and mask_path."""
    monkeypatch.chdir(tmp_path)
    calls = _record_embed(monkeypatch)
    pre = sf.PreprocessingConfig(tile_px=112, tile_um=224, qc="otsu")
    [patient] = sf.embed_patients(cohort, "efficientnet_lite0_imagenet", "mean",
                                  preprocessing=pre)
    assert patient.patient_id == "P1" and list(patient.slide_embeddings) == ["a", "b"]
    (pa, sa, prea), (pb, sb, preb) = calls
    assert pa == cohort.parent / "wsi" / "a.svs" and pb == cohort.parent / "wsi" / "b.svs"
    assert (sa, prea.mpp, prea.qc) == ("a", 0.25, str(cohort.parent / "mask.png"))
    assert (sb, preb.mpp, preb.qc) == ("b", None, "otsu")


def test_cli_encode_patient_uses_the_manifest_rules(cohort, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slideflow.cli import app

    monkeypatch.chdir(tmp_path)
    calls = _record_embed(monkeypatch)
    res = CliRunner().invoke(app, ["encode-patient", str(cohort), "-o", str(tmp_path / "out"),
                                   "-e", "efficientnet_lite0_imagenet", "--tile-px", "112",
                                   "--tile-um", "224"])
    assert res.exit_code == 0, res.output
    assert [c[0] for c in calls] == [cohort.parent / "wsi" / "a.svs",
                                     cohort.parent / "wsi" / "b.svs"]
    assert calls[0][2].mpp == 0.25 and calls[0][2].qc == str(cohort.parent / "mask.png")
    assert (tmp_path / "out" / "P1.pt").exists()


def test_cli_features_manifest_jobs(cohort, tmp_path, monkeypatch):
    from slideflow.cli import _jobs

    monkeypatch.chdir(tmp_path)
    a, b = _jobs([], cohort, False, None, None)
    assert (a.name, a.slide_path, a.mpp, a.mask) == ("a", cohort.parent / "wsi" / "a.svs", 0.25,
                                                     cohort.parent / "mask.png")
    assert (b.name, b.mpp, b.mask) == ("b", None, None)


def test_project_from_a_manifest_honours_mask_and_spacing(cohort, tmp_path, monkeypatch):
    """A manifest given as project annotations: mask_path (relative to the manifest) replaces
    the QC method for its slide in extraction and in bag jobs; spacing_at_level_0 is its mpp."""
    monkeypatch.chdir(tmp_path)
    P = sf.create_project(tmp_path / "proj", slides=cohort.parent / "wsi", annotations=cohort)
    ds = P.dataset(112, 224)
    mask = cohort.parent / "mask.png"
    assert ds.annotation_masks() == {"a": mask} and ds.annotation_mpp() == {"a": 0.25}
    jobs = {j.name: j for j in ds.feature_jobs("slides")}
    assert (jobs["a"].mask, jobs["a"].mpp) == (mask, 0.25) and jobs["b"].mask is None
    summary = ds.extract_tiles(report=False, progress=False)
    assert summary["a"].tiles == len(sf.WSI(CMU, 112, 224, mpp=0.25).qc(str(mask)))
    assert summary["b"].tiles == len(sf.WSI(CMU, 112, 224).qc("otsu"))
    assert summary["a"].tiles != len(sf.WSI(CMU, 112, 224, mpp=0.25).qc("otsu"))


def test_encode_patient_checks_the_manifest_before_building(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import slideflow.model.slide_encoders as encoders
    from slideflow.cli import app

    def boom(*a, **k):
        raise AssertionError("a model was built before the manifest was checked")

    monkeypatch.setattr(encoders, "build_slide_encoder", boom)
    res = CliRunner().invoke(app, ["encode-patient", str(tmp_path / "none.csv"), "-o",
                                   str(tmp_path / "o")])
    assert res.exit_code == 2 and "none.csv" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,image_path\na,x.svs\n")
    res = CliRunner().invoke(app, ["encode-patient", str(bad), "-o", str(tmp_path / "o")])
    assert isinstance(res.exception, ManifestError) and "patient_id" in str(res.exception)
