"""A full disk injected (ENOSPC from the writers' files, their fsync, or one writer call), so
that every error path is covered without mounting anything (CI need not be root).

Promised on every path: the failing write removes its temporary files, nothing is left that
looks finished without its metadata, an existing finished output stays as it was, the slide
fails with 'disk full writing to <folder>', the run goes on and says what it could not write,
and the CLI exits 1.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import slideflow as sf
from slideflow.extract import extract_slide
from slideflow.features import SlideJob, generate_bags
from slideflow.io.atomic import write_json_atomic
from slideflow.io.bags import BagWriter
from slideflow.io.tfrecord import TFRecordWriter
from slideflow.selection import TileSelection

from .cases import hostile
from .fake_disk import FakeDisk, enospc
from .outputs import bag_files, leftovers, outputs
from conftest import CMU

# the same slide at two spacings: A has 88 tiles (~180 kB of 512-wide features), B 20 (~42 kB)
JOBS = [SlideJob("A", slide_path=CMU, mpp=0.25), SlideJob("B", slide_path=CMU, mpp=0.125)]


@pytest.fixture(scope="module")
def ext():
    return sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=32,
                                      batch_size=64)


def _bags(ext, out: Path, fmt: str = "pt", jobs=JOBS):
    return generate_bags(jobs, ext, out, 32, 64, fmt=fmt, selection=TileSelection(qc=None),
                         progress=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in outputs(folder) if (folder / n).is_file()}


@hostile("enospc-injected-bags", "bag generation in every format with files capped at 100 kB "
         "(ENOSPC past it; zarr: its chunk write fails)",
         "A fails 'disk full', B is done, nothing temporary or of A is left; with the space "
         "back, a rerun does A and reuses B")
@pytest.mark.parametrize("fmt", ["pt", "h5", "atlaspatch", "zarr"])
def test_bags_with_a_full_disk_injected(ext, tmp_path, monkeypatch, fmt):
    disk = FakeDisk(monkeypatch, limit=100_000)
    if fmt == "zarr":  # zarr opens its chunk files itself: fail its sink's write half-way
        from slideflow.io.zarr_store import ZarrSink

        real = ZarrSink._write

        def write(self, f, c):
            real(self, f[:1], c[:1])
            if disk.limit is not None and len(f) > 50:
                raise enospc()
            real(self, f[1:], c[1:])

        monkeypatch.setattr(ZarrSink, "_write", write)
    out = tmp_path / "bags"
    rep = _bags(ext, out, fmt)
    assert list(rep.done) == ["B"] and rep.done["B"]["tiles"] == 20
    assert list(rep.failed) == ["A"]
    assert rep.failed["A"].startswith(f"OSError: disk full writing to {out}")
    assert "No space left on device" in rep.failed["A"]
    assert fmt == "zarr" or disk.refused > 0
    assert outputs(out) == bag_files(fmt, "B")  # no temporary, lock or half bag of A
    disk.limit = None  # space freed
    again = _bags(ext, out, fmt)
    assert list(again.done) == ["A"] and again.done["A"]["tiles"] == 88
    assert again.skipped == ["B"]
    assert outputs(out) == bag_files(fmt, "A", "B")


def _write_bag(folder: Path, slide: str, fmt: str, scale: float = 1.0) -> None:
    c = np.arange(10, dtype=np.int64).reshape(5, 2) * 100
    with BagWriter(folder, slide, fmt, num_features=4, patch_size_level0=100,
                   meta={"v": scale}) as w:
        w.append(np.full((5, 4), scale, np.float32), c)


@hostile("enospc-pt-index", "a .pt bag whose index (its metadata) hits a full disk, over no "
         "bag and over a finished one", "OSError; no .pt without index (the .pt was moved in "
         "first and left behind), the finished bag byte-identical, no temporary file")
def test_pt_index_on_a_full_disk(tmp_path, monkeypatch):
    import slideflow.io.pt as pt

    _write_bag(tmp_path, "old", "pt")
    before = _snapshot(tmp_path)

    def save_npz(fh, arrays):
        fh.write(b"PK" * 1000)
        raise enospc()

    monkeypatch.setattr(pt, "save_npz", save_npz)
    for slide in ("new", "old"):
        with pytest.raises(OSError) as exc:
            _write_bag(tmp_path, slide, "pt", scale=2.0)
        assert exc.value.errno == errno.ENOSPC
    assert _snapshot(tmp_path) == before


class _FsyncFails:
    """ENOSPC reported by fsync (NFS and delayed allocation report it there)."""

    def __init__(self, monkeypatch):
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        raise enospc()


def _tfrecord(folder: Path, name: str, n: int) -> None:
    with TFRecordWriter(folder / f"{name}.tfrecords") as w:
        for i in range(n):
            w.write(b"\xff\xd8" + bytes(100), name, i, i)


WRITERS = {
    "pt": lambda d, name: _write_bag(d, name, "pt", 3.0),
    "h5": lambda d, name: _write_bag(d, name, "h5", 3.0),
    "atlaspatch": lambda d, name: _write_bag(d, name, "atlaspatch", 3.0),
    "tfrecord": lambda d, name: _tfrecord(d, name, 7),
    "json": lambda d, name: write_json_atomic(d / f"{name}.json", {"v": 3}),
}


@hostile("enospc-at-fsync", "ENOSPC from fsync (data written, the error comes at the end) in "
         "the .pt, h5, AtlasPatch, TFRecord and JSON writers, over a finished output",
         "OSError; the finished output byte-identical, no temporary file")
@pytest.mark.parametrize("kind", list(WRITERS))
def test_error_at_fsync(tmp_path, monkeypatch, kind):
    WRITERS[kind](tmp_path, "x")  # a finished output of the same name
    before = _snapshot(tmp_path)
    _FsyncFails(monkeypatch)
    with pytest.raises(OSError) as exc:
        WRITERS[kind](tmp_path, "x")
    assert exc.value.errno == errno.ENOSPC
    assert _snapshot(tmp_path) == before


@hostile("enospc-bags-config", "the folder's bags_config.json cannot be written when the run "
         "claims it (disk full)", "SlideflowError naming the folder and the reason before any "
         "slide; no temporary file or claim lock is left (an OSError escaped)")
def test_bags_config_on_a_full_disk(ext, tmp_path, monkeypatch):
    from slideflow.errors import SlideflowError

    FakeDisk(monkeypatch, limit=10)  # not even the config fits
    out = tmp_path / "bags"
    with pytest.raises(SlideflowError, match="cannot claim the folder") as exc:
        _bags(ext, out, jobs=JOBS[1:])
    assert str(out) in str(exc.value) and "No space left on device" in str(exc.value)
    assert outputs(out) == []


@hostile("enospc-lock-file", "a slide's lock file cannot be written (disk full)",
         "the slide fails 'disk full' (the OSError escaped the run), no empty lock is left "
         "(it would block the slide for 10 minutes); once space is back it is done")
def test_lock_file_on_a_full_disk(ext, tmp_path, monkeypatch):
    import slideflow.io.locks as locks

    class FullOs:
        """os for the locks module: the disk fills up when B's lock is written (the folder's
        claim lock, written first, still fits)."""

        last = ""

        def __getattr__(self, name):
            return getattr(os, name)

        def open(self, path, *args, **kwargs):
            self.last = Path(path).name
            return os.open(path, *args, **kwargs)

        def fsync(self, fd):
            if self.last.startswith("B.lock"):  # the lock's temporary file (or the lock)
                raise enospc()
            os.fsync(fd)

    monkeypatch.setattr(locks, "os", FullOs())
    out = tmp_path / "bags"
    rep = _bags(ext, out, jobs=JOBS[1:])
    assert list(rep.failed) == ["B"] and "disk full writing to" in rep.failed["B"]
    assert leftovers(outputs(out)) == [] and not list(out.glob("B.*"))
    monkeypatch.setattr(locks, "os", os)
    assert list(_bags(ext, out, jobs=JOBS[1:]).done) == ["B"]


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory) -> Path:
    import torch

    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=1)
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(ext.model.state_dict(), path)
    return path


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`slideflow ARGS` through the real entry point (exit codes as the shell sees them)."""
    from slideflow.cli import main

    monkeypatch.setattr(sys, "argv", ["slideflow", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _features_args(weights: Path, out: Path, *slides: str) -> list[str]:
    return ["features", *slides, "-o", str(out), "-e", "resnet18_imagenet", "--weights",
            str(weights), "--tile-px", "32", "--tile-um", "64", "--qc", "none", "-q"]


@hostile("enospc-cli-summary", "slideflow features when failures.csv/summary.json cannot be "
         "written", "exit 1; the summary line is printed and the files not written are named "
         "with the reason")
def test_cli_summary_on_a_full_disk(tmp_path, monkeypatch, capsys, r18_weights):
    import slideflow.io.runlog as runlog

    def full(*args, **kwargs):
        raise enospc()

    monkeypatch.setattr(runlog, "write_run_files", full)
    out = tmp_path / "bags"
    code, stdout, err = _main(monkeypatch, capsys, *_features_args(r18_weights, out, str(CMU)))
    assert code == 1, (stdout, err)
    assert "1 done, 0 reused, 0 failed" in stdout
    assert f"error: failures.csv and summary.json not written to {out}" in err
    assert "No space left on device" in err
    assert outputs(out) == ["CMU-1-Small-Region.index.npz", "CMU-1-Small-Region.pt",
                            "bags_config.json"]


@hostile("enospc-tfrecord", "re-extracting a slide (plain and shuffled) with TFRecord files "
         "capped at 100 kB, over a finished TFRecord of the same name",
         "the slide fails 'disk full writing to <folder>'; the old TFRecord, index and sidecar "
         "byte-identical; no temporary or staging file (were left on the full disk)")
@pytest.mark.parametrize("shuffle", [False, True])
def test_tfrecord_on_a_full_disk(tmp_path, monkeypatch, shuffle):
    out = tmp_path / "tfr"
    old = extract_slide(CMU, out, 64, 64, mpp=0.125, qc=None)  # 20 tiles, 145 kB
    assert old.status == "done"
    before = _snapshot(out)
    disk = FakeDisk(monkeypatch, limit=100_000)
    res = extract_slide(CMU, out, 64, 64, mpp=0.5, qc=None, shuffle=shuffle)
    assert res.status == "failed" and disk.refused == 1
    assert res.message.startswith(f"OSError: disk full writing to {out} (No space left")
    assert _snapshot(out) == before


@hostile("enospc-extract-sidecar", "the final .extract.json of a slide cannot be written after "
         "its TFRecord moved into place", "the slide fails; its new TFRecord and index are "
         "removed with the sidecar (no output that nothing describes)")
def test_final_sidecar_on_a_full_disk(tmp_path, monkeypatch):
    import slideflow.extract.job as job

    def write_json(dest, obj):
        if obj.get("complete"):
            raise enospc()
        write_json_atomic(dest, obj)

    monkeypatch.setattr(job, "write_json_atomic", write_json)
    out = tmp_path / "tfr"
    res = extract_slide(CMU, out, 64, 64, mpp=0.125, qc=None)
    assert res.status == "failed" and "disk full writing to" in res.error
    assert outputs(out) == []


@hostile("enospc-extract-report", "slideflow extract-tiles when the HTML report cannot be "
         "written", "the summary comes back with the report named in summary.errors; exit 1 "
         "with 'error: ... report not written' (the OSError crashed the summary)")
def test_extraction_report_on_a_full_disk(tmp_path, monkeypatch, capsys):
    import slideflow.engine.extract.scheduler as scheduler

    def write_report(path, *args, **kwargs):
        raise enospc()

    monkeypatch.setattr(scheduler, "write_report", write_report)
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "B.svs").symlink_to(CMU)
    ann = tmp_path / "ann.csv"
    ann.write_text("patient,slide,mpp\nB,B,0.125\n")
    P = sf.create_project(tmp_path / "p", name="src", slides=slides, annotations=ann)
    summary = P.extract_tiles(64, 64, qc=None, progress=False)
    assert summary.done == ["B"] and summary.reports == []
    assert len(summary.errors) == 1 and "extraction_report.html: report not written" in \
        summary.errors[0]
    code, out, err = _main(monkeypatch, capsys, "extract-tiles", str(tmp_path / "p"),
                           "--tile-px", "64", "--tile-um", "64", "--qc", "none")
    assert code == 1, (out, err)
    assert "0 extracted, 1 reused, 0 failed" in out and "1 run errors" in out
    assert "report not written (" in err and "No space left on device" in err


@hostile("stale-config-temp", "a bags_config.json.tmp-* left by a run killed while claiming "
         "the folder", "removed by the next run's claim (its owner is dead); the run's "
         "outputs and nothing else remain (it survived every rerun)")
def test_claim_removes_a_dead_runs_config_temp(ext, tmp_path):
    import subprocess

    from slideflow.io.atomic import TMP_MARK, host_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "bags"
    out.mkdir()
    stale = out / f"bags_config.json{TMP_MARK}{dead.pid}-{host_tag()}-x1y2z3"
    stale.write_text('{"half": ')
    assert list(_bags(ext, out, jobs=JOBS[1:]).done) == ["B"]
    assert outputs(out) == bag_files("pt", "B")
