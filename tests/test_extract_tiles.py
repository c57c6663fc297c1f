"""Tile extraction to TFRecords on the real slides: counts, pixels, index, resume, crashes,
bad slides, report, loose tiles, subsets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import slideflow as sf
from slideflow.extract import extract_slide, read_sidecar
from slideflow.io import imgcodec
from slideflow.io.tfrecord import FRAMING, TFRecord, TFRecordWriter, read_index
from slideflow.slide.wsi import WSI

from conftest import CMU, CMU_DICOM, CMU_TIFF, TCGA_J2K

PX, UM = 64, 64  # 128 level-0 px per tile on CMU-1: 391 grid tiles, 139 after Otsu
QUIET = {"progress": False}


def _project(tmp: Path, *paths: Path, name: str = "p", annotations: str | None = None):
    folder = tmp / f"{name}_slides"
    folder.mkdir()
    for p in paths:
        (folder / p.name).symlink_to(p)
    csv = None
    if annotations is not None:
        csv = tmp / f"{name}.csv"
        csv.write_text(annotations)
    return sf.create_project(tmp / name, name="src", slides=folder, annotations=csv)


def _files(folder: Path, slide: str) -> dict[str, bytes]:
    return {s: (folder / f"{slide}{s}").read_bytes() for s in (".tfrecords", ".index.npz")}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_counts_pixels_and_index(tmp_path: Path, slides: Path) -> None:
    P = _project(tmp_path, CMU, CMU_DICOM)
    ds = P.dataset(PX, UM)
    summary = ds.extract_tiles(qc="otsu", img_format="png", report=False, **QUIET)
    assert summary.done == ["CMU-1-Small-Region", "CMU-1-Small-Region-dicom"]
    wsi = WSI(CMU, PX, UM).qc("otsu")
    assert summary["CMU-1-Small-Region"].tiles == len(wsi) == 139
    assert ds.manifest() == {"CMU-1-Small-Region": 139, "CMU-1-Small-Region-dicom": 139}

    path = ds.tfrecords_folder / "CMU-1-Small-Region.tfrecords"
    index = read_index(path)
    off = index.offsets
    assert off[0, 0] == 0 and np.array_equal(off[1:, 0], off[:-1, 0] + off[:-1, 1])
    assert off[-1, 0] + off[-1, 1] == path.stat().st_size and (off[:, 1] > FRAMING).all()
    half = wsi.full_extract_px // 2
    assert np.array_equal(index.locations, wsi.coords + half)  # centres, row-major order

    tfr = TFRecord(path, verify=True)
    assert tfr.slide == "CMU-1-Small-Region" and tfr[7]["loc_x"] == wsi.coords[7, 0] + half
    direct = np.concatenate([t for t, _ in wsi.tiles(batch_size=50)])
    stored, locs = zip(*tfr.iter_batches(batch_size=50))
    assert np.array_equal(np.concatenate(stored), direct)  # PNG: exact
    for i in (0, 1, 70, 138):  # and against single-tile reads through another code path
        assert np.array_equal(tfr.image(i), wsi.read_tile(i))
    meta = read_sidecar(path)
    assert meta["complete"] and meta["tiles"] == 139 and meta["full_extract_px"] == 128

    # JPEG (default, quality 100, 4:4:4): high PSNR against the same reads
    j = extract_slide(CMU, tmp_path / "jpg", PX, UM, qc="otsu")
    assert j.status == "done" and j.tiles == 139
    jtfr = TFRecord(tmp_path / "jpg" / "CMU-1-Small-Region.tfrecords")
    assert imgcodec.sniff(jtfr[0]["image_raw"]) == "jpg"
    assert min(_psnr(jtfr.image(i), direct[i]) for i in range(0, 139, 10)) > 45


def test_rerun_skips_and_settings_change_redoes(tmp_path: Path, slides: Path) -> None:
    P = _project(tmp_path, CMU)
    ds = P.dataset(PX, UM)
    first = ds.extract_tiles(qc="otsu", **QUIET)
    tfr = ds.tfrecords_folder / "CMU-1-Small-Region.tfrecords"
    stamp = {p: p.stat().st_mtime_ns for p in (tfr, tfr.with_name("CMU-1-Small-Region.index.npz"),
                                                tfr.with_name("CMU-1-Small-Region.extract.json"))}
    before = _files(ds.tfrecords_folder, "CMU-1-Small-Region")
    t0 = time.perf_counter()
    again = ds.extract_tiles(qc="otsu", **QUIET)
    assert again.skipped == ["CMU-1-Small-Region"] and again["CMU-1-Small-Region"].tiles == 139
    assert time.perf_counter() - t0 < first.seconds + 1
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing rewritten

    redo = ds.extract_tiles(qc="otsu", jpeg_quality=90, **QUIET)
    assert redo.done == ["CMU-1-Small-Region"]
    assert "jpeg_quality" in redo["CMU-1-Small-Region"].reason
    assert _files(ds.tfrecords_folder, "CMU-1-Small-Region") != before
    none_qc = ds.extract_tiles(qc=None, jpeg_quality=90, **QUIET)
    assert none_qc["CMU-1-Small-Region"].tiles == 391 and "qc" in none_qc["CMU-1-Small-Region"].reason
    forced = ds.extract_tiles(qc=None, jpeg_quality=90, skip_extracted=False, **QUIET)
    assert forced.done == ["CMU-1-Small-Region"]

    # a TFRecord without sidecar was made elsewhere: kept, never overwritten silently
    tfr.with_name("CMU-1-Small-Region.extract.json").unlink()
    kept = ds.extract_tiles(qc="otsu", **QUIET)
    assert kept.skipped == ["CMU-1-Small-Region"] and "another tool" in kept.results[
        "CMU-1-Small-Region"].warnings[0]


def test_interrupted_run_reruns_byte_identical(tmp_path: Path, slides: Path, monkeypatch
                                               ) -> None:
    ref = _project(tmp_path, CMU, name="ref").dataset(PX, UM)
    ref.extract_tiles(qc="otsu", **QUIET)
    expected = _files(ref.tfrecords_folder, "CMU-1-Small-Region")
    again = _project(tmp_path, CMU, name="again").dataset(PX, UM)
    again.extract_tiles(qc="otsu", report=False, **QUIET)
    assert _files(again.tfrecords_folder, "CMU-1-Small-Region") == expected  # deterministic

    # 1) a real kill (SIGKILL) in the middle of the slide, in a subprocess
    P = _project(tmp_path, CMU, name="killed")
    script = (
        "import os, signal, sys\n"
        "from slideflow.io.tfrecord import TFRecordWriter\n"
        "orig = TFRecordWriter.write\n"
        "def write(self, *a, **k):\n"
        "    if len(self) == 60:\n"
        "        self._fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(self, *a, **k)\n"
        "TFRecordWriter.write = write\n"
        "import slideflow as sf\n"
        f"sf.load_project(sys.argv[1]).extract_tiles({PX}, {UM}, qc='otsu', progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(P.root)], capture_output=True,
                          timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    ds = P.dataset(PX, UM)
    folder = ds.tfrecords_folder
    assert not (folder / "CMU-1-Small-Region.tfrecords").exists()
    leftovers = [p for p in folder.iterdir() if ".tmp-" in p.name]
    assert leftovers and leftovers[0].stat().st_size > 0
    assert read_sidecar(folder / "CMU-1-Small-Region.tfrecords")["complete"] is False
    assert ds.tfrecords() == [] and ds.manifest() == {}
    rerun = ds.extract_tiles(qc="otsu", **QUIET)
    assert rerun["CMU-1-Small-Region"].reason == "a previous extraction was interrupted"
    assert _files(folder, "CMU-1-Small-Region") == expected
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]

    # 2) an interrupt (Ctrl-C) while re-extracting over an older TFRecord: the old file and
    #    its sidecar stay consistent, and the rerun gives the same bytes as a clean run
    ds.extract_tiles(qc=None, **QUIET)  # now holds 391 tiles made without QC
    old = _files(folder, "CMU-1-Small-Region")
    orig = TFRecordWriter.write

    def interrupt(self, *a, **k):
        if len(self) == 40:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(TFRecordWriter, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ds.extract_tiles(qc="otsu", **QUIET)
    monkeypatch.setattr(TFRecordWriter, "write", orig)
    assert _files(folder, "CMU-1-Small-Region") == old
    meta = read_sidecar(folder / "CMU-1-Small-Region.tfrecords")
    assert meta["complete"] and meta["request"]["qc"] is None and meta["tiles"] == 391
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    assert ds.extract_tiles(qc="otsu", **QUIET).done == ["CMU-1-Small-Region"]
    assert _files(folder, "CMU-1-Small-Region") == expected


def test_bad_slides_reported_others_finish(tmp_path: Path, slides: Path) -> None:
    broken = tmp_path / "broken.svs"
    broken.write_bytes(CMU.read_bytes()[:20000])  # truncated copy
    P = _project(tmp_path, CMU, TCGA_J2K, broken, CMU_TIFF)
    ds = P.dataset(PX, 256)
    s = ds.extract_tiles(qc="otsu", **QUIET)
    assert s.done == ["CMU-1-Small-Region"]
    assert set(s.failed) == {"broken", "tcga-cr-7395-01a-01-ts1", "CMU-1-Small-Region.jpeg"}
    assert "check the MPP" in s.failed["CMU-1-Small-Region.jpeg"]  # its MPP is 100x off
    assert "MissingMPPError" in s.failed["tcga-cr-7395-01a-01-ts1"]
    assert "mpp" in s.failed["tcga-cr-7395-01a-01-ts1"]
    assert "broken" in s.failed["broken"]
    assert "1 extracted" in repr(s) and "3 failed" in repr(s)
    report = ds.tfrecords_folder / "extraction_report.html"
    assert s.reports == [report]
    text = report.read_text()
    assert "data:image/png;base64," in text and "MissingMPPError" in text
    assert all(n in text for n in ("CMU-1-Small-Region", "broken", "tcga-cr-7395-01a-01-ts1"))
    assert "<link" not in text and "src=\"http" not in text  # self-contained

    # an mpp annotation column is honoured; mpp_override takes precedence
    (P.annotations).write_text("patient,slide,mpp\na,CMU-1-Small-Region,\n"
                               "b,tcga-cr-7395-01a-01-ts1,0.5\nc,broken,\n"
                               "d,CMU-1-Small-Region.jpeg,0.499\n")
    s2 = P.dataset(PX, 256).extract_tiles(qc="otsu", **QUIET)
    assert s2.skipped == ["CMU-1-Small-Region"] and list(s2.failed) == ["broken"]
    assert s2["CMU-1-Small-Region.jpeg"].tiles == s["CMU-1-Small-Region"].tiles  # same pixels
    tc = s2["tcga-cr-7395-01a-01-ts1"]
    assert tc.info["mpp"] == 0.5 and any("MPP" in w for w in tc.warnings)
    n05 = len(WSI(TCGA_J2K, PX, 256, mpp=0.5).qc("otsu"))
    assert tc.tiles == n05
    s3 = P.dataset(PX, 256).extract_tiles(qc="otsu", mpp_override={"tcga-cr-7395-01a-01-ts1": 1.0},
                                          report=False, **QUIET)
    assert "mpp_override" in s3["tcga-cr-7395-01a-01-ts1"].reason
    assert s3["tcga-cr-7395-01a-01-ts1"].tiles == len(WSI(TCGA_J2K, PX, 256, mpp=1.0).qc("otsu"))


def test_save_tiles_subset_shuffle_and_normalizer(tmp_path: Path, slides: Path) -> None:
    P = _project(tmp_path, CMU)
    ds = P.dataset(PX, UM)
    s = ds.extract_tiles(qc="otsu", save_tiles=True, report=False, **QUIET)
    loose = P.root / "tiles" / "src" / "64px_64um" / "CMU-1-Small-Region"
    locs = read_index(ds.tfrecords_folder / "CMU-1-Small-Region.tfrecords").locations
    names = sorted(p.name for p in loose.iterdir())
    assert len(names) == s["CMU-1-Small-Region"].tiles == 139
    assert names == sorted(f"CMU-1-Small-Region-{x}-{y}.jpg" for x, y in locs)  # centres
    x, y = locs[5]
    assert (loose / f"CMU-1-Small-Region-{x}-{y}.jpg").read_bytes() == \
        TFRecord(ds.tfrecords_folder / "CMU-1-Small-Region.tfrecords")[5]["image_raw"]

    # max_tiles: a seeded subset in row-major order; shuffle: a seeded permutation of it
    out = tmp_path / "sub"
    a = extract_slide(CMU, out / "a", PX, UM, qc="otsu", max_tiles=30, seed=3)
    b = extract_slide(CMU, out / "b", PX, UM, qc="otsu", max_tiles=30, seed=3, shuffle=True)
    extract_slide(CMU, out / "b2", PX, UM, qc="otsu", max_tiles=30, seed=3, shuffle=True)
    assert a.tiles == b.tiles == 30
    la = read_index(out / "a" / "CMU-1-Small-Region.tfrecords").locations
    lb = read_index(out / "b" / "CMU-1-Small-Region.tfrecords").locations
    assert {tuple(v) for v in la} <= {tuple(v) for v in locs}
    assert np.array_equal(la, la[np.lexsort((la[:, 0], la[:, 1]))])  # row-major
    assert not np.array_equal(la, lb) and sorted(map(tuple, la)) == sorted(map(tuple, lb))
    assert _files(out / "b", "CMU-1-Small-Region") == _files(out / "b2", "CMU-1-Small-Region")
    assert not [p for p in (out / "b").iterdir() if ".tmp-" in p.name]

    class Invert:
        def transform(self, x):
            return 255 - x

        def to_config(self):
            return {"method": "invert"}

    n = extract_slide(CMU, out / "n", PX, UM, qc="otsu", img_format="png", normalizer=Invert(),
                      max_tiles=5)
    t = TFRecord(out / "n" / "CMU-1-Small-Region.tfrecords")
    wsi = WSI(CMU, PX, UM).qc("otsu")
    first = int(np.flatnonzero((wsi.coords + 64 == t.locations[0]).all(1))[0])
    assert np.array_equal(t.image(0), 255 - wsi.read_tile(first)) and n.status == "done"
    assert read_sidecar(out / "n" / "CMU-1-Small-Region.tfrecords")["request"]["normalizer"] == \
        {"method": "invert"}
    r = extract_slide(CMU, out / "r", PX, UM, qc="otsu", normalizer="reinhard", max_tiles=5)
    meta = read_sidecar(out / "r" / "CMU-1-Small-Region.tfrecords")
    assert r.status == "done" and meta["request"]["normalizer"]["method"] == "reinhard"


def test_option_errors(tmp_path: Path, slides: Path) -> None:
    with pytest.raises(ValueError, match="img_format"):
        extract_slide(CMU, tmp_path, PX, UM, img_format="bmp")
    with pytest.raises(ValueError, match="qc must be"):
        extract_slide(CMU, tmp_path, PX, UM, qc="magic")
    with pytest.raises(ValueError, match="roi_method"):
        extract_slide(CMU, tmp_path, PX, UM, roi_method="inner")
    r = extract_slide(CMU, tmp_path / "o", PX, UM, roi_method="inside")
    assert r.status == "failed" and "no ROI file" in r.error
    assert not os.listdir(tmp_path / "o") if (tmp_path / "o").exists() else True
    assert json.dumps(r.as_dict())
