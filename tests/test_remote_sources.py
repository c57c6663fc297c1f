"""Project sources whose slides live at a URL (an S3 prefix, an https folder, a DICOMweb
service): listed there, extracted and featurised with tiles and bags identical to a project
over the local files, reused on a rerun by their ETag, and never a credential written to the
project's files or logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import slideflow as sf
from slideflow.engine.bag_runner import job_cost
from slideflow.engine.features import SlideJob, generate_feature_bags
from slideflow.errors import ProjectError, SlideflowError
from slideflow.project.sources import Source

from conftest import CMU, CMU_DICOM
from remote_servers import DicomWebServer, RangeHTTPServer

GEOMETRY = dict(tile_px=112, tile_um=224)
EXTRACT = dict(qc=None, report=False, progress=False)
SECRET = "s3cr3t-T0KEN"


@pytest.fixture(autouse=True)
def _fast(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_BACKOFF", "0.01")
    monkeypatch.setenv("SLIDEFLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def extractor():
    return sf.build_feature_extractor("efficientnet_lite0_imagenet", device="cpu",
                                      batch_size=8)


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(pattern))}


def _run(P, extractor, out: Path):
    """Tiles into the project's TFRecords, bags from the slides: (tfrecords, bags)."""
    ds = P.dataset(**GEOMETRY)
    summary = ds.extract_tiles(**EXTRACT)
    assert not summary.failed, summary.failed
    report = ds.generate_feature_bags(extractor, out, source="slides", qc=None, progress=False)
    assert not report.failed, report.failed
    return _files(ds.tfrecords_folder, "*.tfrecords"), _files(out, "*.pt")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, extractor, slides):
    root = tmp_path_factory.mktemp("local")
    (root / "slides").mkdir()
    (root / "slides" / CMU.name).symlink_to(CMU)
    P = sf.create_project(root / "proj", slides=root / "slides")
    return _run(P, extractor, root / "bags")


def test_s3_prefix_source_equals_local_and_reruns_by_etag(s3_slides, local_run, extractor,
                                                           tmp_path):
    s3_slides.put("srcs", "cohort/CMU-1-Small-Region.svs", CMU)
    s3_slides.put("srcs", "cohort/notes/readme.txt", b"not a slide")
    P = sf.create_project(tmp_path / "proj", slides="s3://srcs/cohort/")
    (src,) = P.load_sources().values()
    assert src.remote and src.slides == "s3://srcs/cohort/"
    assert json.loads(P.dataset_config.read_text())["MyProject"]["slides"] == "s3://srcs/cohort/"
    assert src.slide_files() == {"CMU-1-Small-Region": "s3://srcs/cohort/CMU-1-Small-Region.svs"}
    assert P.read_annotations()["slide"].tolist() == ["CMU-1-Small-Region"]
    tfrs, bags = _run(P, extractor, tmp_path / "bags")
    assert tfrs == local_run[0] and len(tfrs) == 1  # tiles byte for byte
    assert bags == local_run[1] and len(bags) == 1
    side = json.loads(next((P.root / "tfrecords").rglob("*.extract.json")).read_text())
    assert side["slide_path"] == "s3://srcs/cohort/CMU-1-Small-Region.svs"
    assert side["request"]["slide_file"]["etag"]  # resume key: the object's ETag, not a stat

    before = s3_slides.ranged_gets()
    again = P.dataset(**GEOMETRY).extract_tiles(**EXTRACT)
    assert again.done == [] and not again.failed  # reused: same size and ETag
    assert s3_slides.ranged_gets() == before
    s3_slides.put("srcs", "cohort/CMU-1-Small-Region.svs", CMU.read_bytes() + b"\0")
    changed = P.dataset(**GEOMETRY).extract_tiles(**EXTRACT)
    assert changed.done == ["CMU-1-Small-Region"]  # a replaced object is extracted again


@pytest.fixture()
def http_folder():
    server = RangeHTTPServer({"cohort/CMU-1-Small-Region.svs": CMU.read_bytes(),
                              "cohort/readme.txt": b"x"})
    yield server
    server.close()


def test_https_folder_with_a_token_never_writes_it(http_folder, local_run, extractor,
                                                   tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="slideflow")
    url = f"{http_folder.url}/cohort/?token={SECRET}"
    P = sf.create_project(tmp_path / "proj")
    src = P.add_source("web", slides=url)
    assert src.slides == url  # in memory: usable this session
    stored = json.loads(P.dataset_config.read_text())["web"]["slides"]
    assert stored == f"{http_folder.url}/cohort/?token=REDACTED"
    assert "without its credentials" in caplog.text
    P.create_blank_annotations(overwrite=True)
    tfrs, bags = _run(P, extractor, P.root / "bags")
    assert tfrs == local_run[0] and bags == local_run[1]
    rerun = P.dataset(**GEOMETRY).extract_tiles(qc=None, progress=False)  # + HTML report
    assert rerun.reports and not rerun.failed
    paths = [p for _, p, _ in http_folder.log]
    assert paths[0] == f"/cohort/?token={SECRET}"  # the listing carried the token
    assert all(p.endswith(f"?token={SECRET}") for p in paths)  # and every slide read
    written = [p for p in P.root.rglob("*") if p.is_file()]
    assert len(written) > 5
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]
    assert SECRET not in caplog.text
    assert repr(P.dataset(**GEOMETRY))  # display does not leak it either
    assert SECRET not in P.dataset(**GEOMETRY).summary().to_csv()


def test_environment_reference_in_a_stored_url(http_folder, tmp_path, monkeypatch):
    P = sf.create_project(tmp_path / "proj")
    P.add_source("web", slides=f"{http_folder.url}/cohort/?token=${{SF_TEST_TOKEN}}")
    assert "${SF_TEST_TOKEN}" in P.dataset_config.read_text()  # a reference, kept
    P = sf.load_project(P.root)
    with pytest.raises(SlideflowError, match="SF_TEST_TOKEN is not set"):
        P.dataset(**GEOMETRY).slides()
    monkeypatch.setenv("SF_TEST_TOKEN", SECRET)
    P.create_blank_annotations(overwrite=True)
    assert P.dataset(**GEOMETRY).slides() == ["CMU-1-Small-Region"]
    assert http_folder.log[-1][1] == f"/cohort/?token={SECRET}"


def test_dicomweb_service_as_a_source(slides, extractor, tmp_path):
    server = DicomWebServer(CMU_DICOM)
    try:
        P = sf.create_project(tmp_path / "proj")
        P.add_source("idc", slides=f"dicomweb+http://{server.base}/dicomweb")
        P.create_blank_annotations(overwrite=True)
        ds = P.dataset(**GEOMETRY)
        assert ds.slides() == [server.series]
        web = ds.generate_feature_bags(extractor, tmp_path / "web", source="slides", qc=None,
                                       progress=False)
        assert list(web.done) == [server.series]
        local = generate_feature_bags([SlideJob(server.series, CMU_DICOM)], extractor,
                                      tmp_path / "local", 112, 224, qc=None, progress=False)
        assert list(local.done) == [server.series]
        assert _files(tmp_path / "web", "*.pt") == _files(tmp_path / "local", "*.pt")
        frames = server.frame_requests()
        again = ds.generate_feature_bags(extractor, tmp_path / "web", source="slides",
                                         qc=None, progress=False)
        assert again.skipped == [server.series]  # resume key: the series' instance UIDs
        assert server.frame_requests() == frames
        assert job_cost(ds.feature_jobs()[0]) == 0  # no size known: scheduled last
    finally:
        server.close()


def test_outputs_and_rois_stay_local(tmp_path):
    with pytest.raises(ProjectError, match="tfrecords 's3://b/t/': a URL is taken only for"):
        Source.from_json("x", {"slides": "s3://b/s/", "tfrecords": "s3://b/t/"})
    P = sf.create_project(tmp_path / "proj")
    with pytest.raises(ProjectError, match="roi"):
        P.add_source("x", slides="s3://b/s/", roi="https://u:pw@h/roi/")
    assert "pw" not in P.dataset_config.read_text() if P.dataset_config.exists() else True


def test_safe_url_redacts_secret_query_values():
    from slideflow.remote.url import safe_url

    url = ("https://u:pw@h/a/b.svs?X-Amz-Credential=AK&X-Amz-Signature=s1&X-Amz-Expires=60"
           "&sig=s2&sv=2024&access_token=s3&api_key=s4&secret=s5&password=s6&auth=s7"
           "&token=${TOKEN}")
    assert safe_url(url) == (
        "https://h/a/b.svs?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=60"
        "&sig=REDACTED&sv=2024&access_token=REDACTED&api_key=REDACTED&secret=REDACTED"
        "&password=REDACTED&auth=REDACTED&token=${TOKEN}")
    assert safe_url("dicomweb://h/p?study=1.2&series=3.4") == "dicomweb://h/p?study=1.2&series=3.4"
