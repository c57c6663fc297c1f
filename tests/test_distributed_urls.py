"""The device runner and the Ray runner take slides named by URLs (an SVS read in place from
S3, a DICOM series stored as several S3 objects and an NDPI over https, both through the
cache) and write the bags a serial run over the local files writes, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

import slideflow as sf
from slideflow.engine.bag_runner import job_cost, longest_first
from slideflow.features import generate_bags, jobs_from_paths

from conftest import CMU, CMU_DICOM, NDPI
from remote_servers import RangeHTTPServer

GEOMETRY = (112, 224)


def _bags(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.pt"))}


@pytest.fixture(scope="module")
def extractor():
    return sf.build_feature_extractor("efficientnet_lite0_imagenet", device="cpu",
                                      batch_size=8)


@pytest.fixture(scope="module")
def url_jobs(s3_slides, tmp_path_factory):
    """Jobs for the three slides as URLs; SLIDEFLOW_CACHE set before any worker starts."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDEFLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
    s3_slides.put("dist", f"cohort/{CMU.name}", CMU)
    for f in sorted(CMU_DICOM.iterdir()):
        s3_slides.put("dist", f"cohort/{CMU_DICOM.name}/{f.name}", f)
    http = RangeHTTPServer({NDPI.name: NDPI.read_bytes()})
    yield jobs_from_paths([f"s3://dist/cohort/{CMU.name}", f"s3://dist/cohort/{CMU_DICOM.name}/",
                           f"{http.url}/{NDPI.name}"])
    http.close()
    mp.undo()


@pytest.fixture(scope="module")
def local_bags(extractor, slides, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("serial")
    report = generate_bags(jobs_from_paths([CMU, CMU_DICOM, NDPI]), extractor, out, *GEOMETRY,
                           progress=False)
    assert len(report.done) == 3
    return _bags(out)


def test_url_jobs_are_scheduled_by_object_size(url_jobs):
    sizes = [job_cost(j) for j in url_jobs]
    assert sizes[0] == CMU.stat().st_size and sizes[2] == NDPI.stat().st_size
    assert sizes[1] == sum(f.stat().st_size for f in CMU_DICOM.iterdir())  # a prefix: its objects
    assert [j.name for j in longest_first(url_jobs)] == \
        [j.name for _, j in sorted(zip(sizes, url_jobs), key=lambda x: -x[0])]


def test_two_cpu_devices_read_urls_like_local_files(url_jobs, local_bags, extractor, tmp_path):
    report = generate_bags(url_jobs, extractor, tmp_path, *GEOMETRY, progress=False,
                           devices=["cpu", "cpu"])
    assert sorted(report.done) == sorted(j.name for j in url_jobs) and not report.failed
    assert len({o.worker for o in report.outcomes}) == 2
    assert all(o.fetched and o.fetched["requests"] > 0 for o in report.outcomes)
    assert _bags(tmp_path) == local_bags and len(local_bags) == 3
    again = generate_bags(url_jobs, extractor, tmp_path, *GEOMETRY, progress=False)
    assert sorted(again.skipped) == sorted(j.name for j in url_jobs)  # ETag/listing keys match


@pytest.mark.slow  # a Ray cluster starts (~25 s on 2 cores)
def test_ray_reads_urls_like_local_files(url_jobs, local_bags, extractor, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # after the env is set
    try:
        report = generate_bags(url_jobs, extractor, tmp_path, *GEOMETRY, progress=False,
                               ray=True)
    finally:
        ray.shutdown()
    assert sorted(report.done) == sorted(j.name for j in url_jobs), report.failed
    assert _bags(tmp_path) == local_bags


def test_bare_ray_flag_before_a_slide_url():
    """`slideflow features --ray s3://b/cohort/ -o bags`: the URL is a slide prefix, not the Ray
    address (a `ray://` URL still is one)."""
    from slideflow.cli import ray_argv

    assert ray_argv(["features", "--ray", "s3://b/cohort/", "-o", "o"])[2:4] == \
        ["", "s3://b/cohort/"]
    assert ray_argv(["features", "--ray", "ray://head:10001", "s3://b/x.svs"])[2] == \
        "ray://head:10001"
