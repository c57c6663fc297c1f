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
