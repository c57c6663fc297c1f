"""Shared fixtures: the real slides in ../shared/data/slides, read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SLIDES = Path(os.environ.get(
    "SLIDEFLOW_TEST_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
))
CMU = SLIDES / "CMU-1-Small-Region.svs"
CMU_DICOM = SLIDES / "CMU-1-Small-Region-dicom"
CMU_TIFF = SLIDES / "CMU-1-Small-Region.jpeg.tiff"
TCGA_J2K = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
NDPI = SLIDES / "test3-DAPI-2-387.ndpi"
DICOM_CAMELYON = SLIDES / "multiframe_camelyon_challenge_image.dcm"
QPTIFF = SLIDES / "small_vectra.qptiff"


def pytest_collection_modifyitems(config, items):
    if not CMU.exists():
        skip = pytest.mark.skip(reason=f"test slides not found at {SLIDES}")
        for item in items:
            if "slides" in item.fixturenames:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def slides() -> Path:
    return SLIDES


@pytest.fixture()
def cmu_slides_project(tmp_path: Path, slides: Path):
    """A fresh project whose slide folder holds CMU-1-Small-Region (a symlink, read in place)."""
    import slideflow as sf

    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / CMU.name).symlink_to(CMU)
    return sf.create_project(tmp_path / "proj", slides=folder)


@pytest.fixture(scope="session")
def http_slides(slides):
    """A Range-capable HTTP server on 127.0.0.1 serving cmu.svs, cmu.tiff and tcga.svs (JPEG
    2000), with fault injection (tests/remote_servers.py)."""
    from remote_servers import RangeHTTPServer

    server = RangeHTTPServer({"cmu.svs": CMU.read_bytes(), "cmu.tiff": CMU_TIFF.read_bytes(),
                              "tcga.svs": TCGA_J2K.read_bytes()})
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_slides(slides):
    """moto's S3 on 127.0.0.1 (credentials and endpoint in the environment) holding
    s3://cohort/slides/{cmu.svs, tcga.svs}, with fault injection."""
    from remote_servers import S3Server

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in (*env, "AWS_ENDPOINT_URL_S3")}
    server = S3Server()
    os.environ.update(env, AWS_ENDPOINT_URL_S3=server.endpoint)
    server.put("cohort", "slides/cmu.svs", CMU)
    server.put("cohort", "slides/tcga.svs", TCGA_J2K)
    yield server
    server.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
