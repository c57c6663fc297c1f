"""Resume reuses an output only when its source is the same file and complete."""

from __future__ import annotations

import os
import shutil

import pytest

import slideflow as sf
from slideflow.errors import OutputConflictError
from slideflow.features import SlideJob, generate_bags, jobs_from_paths

from .cases import hostile
from conftest import CMU, CMU_TIFF

PX, UM = 64, 512


@pytest.fixture(scope="module")
def ext():
    return sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64,
                                      batch_size=16)


@hostile("replaced-slide", "a slide file replaced by another slide under the same name",
         "its bag is redone (was reused: identity now includes size and mtime_ns)")
def test_replaced_slide_is_redone(ext, tmp_path):
    slide = tmp_path / "A.svs"
    shutil.copy(CMU, slide)
    out = tmp_path / "bags"
    first = generate_bags(jobs_from_paths([slide]), ext, out, PX, UM, progress=False)
    assert list(first.done) == ["A"]
    again = generate_bags(jobs_from_paths([slide]), ext, out, PX, UM, progress=False)
    assert again.skipped == ["A"]
    os.utime(slide, ns=(1, 1))  # same bytes, another mtime: treated as another file
    third = generate_bags(jobs_from_paths([slide]), ext, out, PX, UM, progress=False)
    assert list(third.done) == ["A"]


def _tfrecord_job(tmp_path, name="CMU-1-Small-Region"):
    from slideflow.extract import extract_slide

    res = extract_slide(CMU, tmp_path / "tfr", PX, UM, report=False)
    assert res.status == "done", res.error
    return SlideJob(name, slide_path=CMU, tfrecord=tmp_path / "tfr" / f"{name}.tfrecords")


@hostile("re-extracted-tfrecord", "a TFRecord extracted again (other tiles, same name) after "
         "its bag was made", "the bag is redone (sidecar/index sha256 in the identity)")
def test_re_extracted_tfrecord_is_redone(ext, tmp_path):
    from slideflow.extract import extract_slide

    job = _tfrecord_job(tmp_path)
    out = tmp_path / "bags"
    assert list(generate_bags([job], ext, out, PX, UM, progress=False).done) == [job.name]
    assert generate_bags([job], ext, out, PX, UM, progress=False).skipped == [job.name]
    res = extract_slide(CMU, tmp_path / "tfr", PX, UM, report=False, max_tiles=3,
                        skip_extracted=False)
    assert res.status == "done" and res.tiles == 3
    again = generate_bags([job], ext, out, PX, UM, progress=False)
    assert again.done[job.name]["tiles"] == 3


@hostile("tfrecord-truncated-at-record", "a TFRecord cut exactly at a record boundary (its "
         "sidecar promises more)", "the slide fails naming the file and both counts; no short "
         "bag reported done")
def test_truncated_tfrecord_never_gives_a_short_bag(ext, tmp_path):
    from slideflow.io.tfrecord import read_index

    job = _tfrecord_job(tmp_path)
    index = read_index(job.tfrecord)
    n = len(index)
    assert n > 2
    offset, length = (int(v) for v in index.offsets[n - 2])
    with open(job.tfrecord, "r+b") as fh:
        fh.truncate(offset + length)  # keep n - 1 whole records
    report = generate_bags([job], ext, tmp_path / "bags", PX, UM, progress=False)
    assert not report.done and f"{n - 1} records read" in report.failed[job.name]
    assert not (tmp_path / "bags" / f"{job.name}.pt").exists()


@hostile("name-collision", "A.svs, A.tiff and sub/A.svs given to one run (the CLI)",
         "OutputConflictError listing the files before any work (two were 'reused' silently)")
def test_same_name_is_an_error(tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(CMU, tmp_path / "A.svs")
    shutil.copy(CMU_TIFF, tmp_path / "A.tiff")
    shutil.copy(CMU, tmp_path / "sub" / "A.svs")
    with pytest.raises(OutputConflictError, match="A.tiff") as exc:
        jobs_from_paths([tmp_path / "A.svs", tmp_path / "A.tiff", tmp_path / "sub" / "A.svs"])
    assert str(tmp_path / "sub" / "A.svs") in str(exc.value)
    # the same file twice (a folder and a file in it) is not a collision
    assert len(jobs_from_paths([tmp_path / "A.svs", tmp_path / "A.svs"])) == 1
