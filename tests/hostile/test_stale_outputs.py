"""A rerun reuses a bag or TFRecord only when a fresh run would write the same bytes: every input
that changes them (effective MPP and its source, mask and ROI content, the output's own content)
is part of the resume key."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from slideflow.features import SlideJob, generate_bags

from .cases import hostile
from .tiny import tiny_extractor
from conftest import CMU

PX, UM = 112, 224  # 24 tiles of CMU-1-Small-Region at its own MPP (0.499)


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    return tiny_extractor(tmp_path_factory.mktemp("tiny"))


def _run(ext, out, *jobs):
    return generate_bags(list(jobs), ext, out, PX, UM, progress=False)


@hostile("stale-mpp-override", "bags made with a wrong MPP override, rerun with the right one "
         "(--mpp, --mpp-csv or the manifest's spacing_at_level_0); then the same value from "
         "another source", "the bag is remade with the fresh run's tiles (was 'skipped, bag "
         "exists': 117 tiles kept where a fresh run gives 24); a changed source also remakes it")
def test_mpp_change_remakes_the_bag(ext, tmp_path):
    out = tmp_path / "bags"
    wrong = _run(ext, out, SlideJob("A", slide_path=CMU, mpp=1.0, mpp_source="--mpp"))
    assert wrong.done["A"]["tiles"] == 117
    fixed = _run(ext, out, SlideJob("A", slide_path=CMU, mpp=0.499, mpp_source="--mpp-csv"))
    assert fixed.done["A"]["tiles"] == 24
    assert _run(ext, out, SlideJob("A", slide_path=CMU, mpp=0.499,
                                   mpp_source="--mpp-csv")).skipped == ["A"]
    moved = _run(ext, out, SlideJob("A", slide_path=CMU, mpp=0.499, mpp_source="manifest"))
    assert list(moved.done) == ["A"]
    own = _run(ext, out, SlideJob("A", slide_path=CMU))  # the slide's own MPP (0.499)
    assert own.done["A"]["tiles"] == 24


def _mask(path, keep_left: float):
    """A 100x75 mask (CMU is 2220x2967 px) keeping the left `keep_left` of the slide."""
    img = np.zeros((100, 75), np.uint8)
    img[:, : int(75 * keep_left)] = 255
    cv2.imwrite(str(path), img)
    return path


@hostile("stale-mask", "bags made without a mask, rerun with mask_path; then the mask file "
         "edited in place", "remade each time (the mask's sha256 is in the key; adding a mask "
         "was ignored)")
def test_mask_change_remakes_the_bag(ext, tmp_path):
    out = tmp_path / "bags"
    full = _run(ext, out, SlideJob("A", slide_path=CMU))
    assert full.done["A"]["tiles"] == 24
    mask = _mask(tmp_path / "mask.png", 0.5)
    half = _run(ext, out, SlideJob("A", slide_path=CMU, mask=mask))
    assert 0 < half.done["A"]["tiles"] < 24
    assert _run(ext, out, SlideJob("A", slide_path=CMU, mask=mask)).skipped == ["A"]
    st = mask.stat()
    _mask(mask, 1.0)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: content decides
    again = _run(ext, out, SlideJob("A", slide_path=CMU, mask=mask))
    assert again.done["A"]["tiles"] == 24
    mask.unlink()  # a mask gone: the slide fails naming it, the old bag is not 'reused'
    gone = _run(ext, out, SlideJob("A", slide_path=CMU, mask=mask))
    assert "mask.png" in gone.failed["A"] and not gone.skipped


@hostile("stale-roi-file", "bags made with an ROI file, the ROI edited (same name)",
         "the bag is remade from the new ROI (its sha256 is in the key)")
def test_roi_change_remakes_the_bag(ext, tmp_path):
    out = tmp_path / "bags"
    roi = tmp_path / "A.csv"
    roi.write_text("roi_name,x_base,y_base\nr,0,0\nr,1000,0\nr,1000,1000\nr,0,1000\n")
    first = _run(ext, out, SlideJob("A", slide_path=CMU, rois=roi))
    roi.write_text("roi_name,x_base,y_base\nr,0,0\nr,2200,0\nr,2200,2900\nr,0,2900\n")
    second = _run(ext, out, SlideJob("A", slide_path=CMU, rois=roi))
    assert second.done["A"]["tiles"] > first.done["A"]["tiles"] > 0


@hostile("truncated-pt-index-intact", "a .pt bag cut short (its .index.npz intact) or "
         "overwritten with other bytes of the same size, then the run repeated",
         "remade, not 'reused' (the index records the .pt's size and a sampled sha256)")
def test_truncated_pt_is_remade(ext, tmp_path):
    import slideflow as sf

    out = tmp_path / "bags"
    _run(ext, out, SlideJob("A", slide_path=CMU))
    pt = out / "A.pt"
    good = pt.read_bytes()
    pt.write_bytes(good[: len(good) // 2])
    again = _run(ext, out, SlideJob("A", slide_path=CMU))
    assert list(again.done) == ["A"] and pt.read_bytes() == good  # byte-identical remake
    pt.write_bytes(good[:-8] + b"\0" * 8)
    assert list(_run(ext, out, SlideJob("A", slide_path=CMU)).done) == ["A"]
    assert sf.io.read_bag(pt).features.shape == (24, 4)


@hostile("tfrecord-overwritten-same-size", "a finished TFRecord overwritten in place with "
         "other bytes of the same size (sidecar and index intact, mtime restored)",
         "extraction redoes it ('content differs from the recorded digest'), not reused")
def test_overwritten_tfrecord_is_redone(tmp_path):
    from slideflow.extract import extract_slide

    tfr_dir = tmp_path / "tfr"
    assert extract_slide(CMU, tfr_dir, PX, UM, report=False).status == "done"
    tfr = tfr_dir / "CMU-1-Small-Region.tfrecords"
    assert extract_slide(CMU, tfr_dir, PX, UM, report=False).status == "reused"
    st = tfr.stat()
    data = tfr.read_bytes()
    a, z = len(data) // 4, 3 * len(data) // 4  # the middle half replaced, same size
    tfr.write_bytes(data[:a] + bytes(b ^ 0xFF for b in data[a:z]) + data[z:])
    os.utime(tfr, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = extract_slide(CMU, tfr_dir, PX, UM, report=False)
    assert res.status == "done" and "content differs" in res.reason
    assert res.tiles == 24


@hostile("reuse-on-read-only-storage", "extract-tiles rerun over finished TFRecords on "
         "read-only storage (no lock file can be made)", "every slide reused (the reuse check "
         "comes before the lock; was: failed taking the lock)")
def test_finished_tfrecords_on_read_only_storage(tmp_path, monkeypatch):
    import errno

    from slideflow.extract import extract_slide
    from slideflow.io import locks

    tfr_dir = tmp_path / "tfr"
    assert extract_slide(CMU, tfr_dir, PX, UM, report=False).status == "done"

    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))

    monkeypatch.setattr(locks.SlideLock, "acquire", read_only)
    res = extract_slide(CMU, tfr_dir, PX, UM, report=False)
    assert res.status == "reused" and res.tiles == 24, res.message
    redo = extract_slide(CMU, tfr_dir, PX, UM, report=False, max_tiles=3)  # needs the lock
    assert redo.status == "failed" and "Read-only" in redo.error
