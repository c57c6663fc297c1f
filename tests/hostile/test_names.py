"""Names from data never become paths outside the output folder, and text from data never
becomes a spreadsheet formula in a CSV we write."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slideflow.cli import app
from slideflow.features import SlideJob, generate_bags

from .cases import hostile, hostile_params
from .tiny import NAME, tiny_extractor
from conftest import CMU

runner = CliRunner()
GEOMETRY = ["--tile-px", "112", "--tile-um", "224", "--qc", "none"]


def _manifest(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "image_path"])
        w.writerows(rows)
    return path


def _run(tmp_path: Path, manifest: Path) -> tuple[object, Path]:
    tiny_extractor(tmp_path / "tiny")
    out = tmp_path / "run" / "bags"
    res = runner.invoke(app, ["features", "--manifest", str(manifest), "-o", str(out), "-e",
                              NAME, "--weights", str(tmp_path / "tiny" / "hostile_tiny.pth"),
                              *GEOMETRY])
    return res, out


def _failures(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "failures.csv", newline="") as fh:
        return {r["slide"]: (r["error_type"], r["message"]) for r in csv.DictReader(fh)}


def _files_outside(tmp_path: Path, out: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents
            and "tiny" not in p.parts and p.name != "manifest.csv"]


ESCAPES = hostile_params([
    ("sample-id-dotdot", "a manifest sample_id of '../x' (with a good row)",
     "that slide fails 'cannot name an output file: it holds a path separator'; nothing is "
     "written outside -o (bag, index and lock went to the parent); the good row is done",
     "../x"),
    ("sample-id-absolute", "a manifest sample_id of an absolute path '/<tmp>/abs/x'",
     "that slide fails the same way; nothing written at /<tmp>/abs", "ABS"),
    ("sample-id-hidden", "a manifest sample_id of '.x' (a hidden bag nobody lists)",
     "that slide fails: 'it starts with '.''", ".x"),
])


@pytest.mark.parametrize("sid", ESCAPES)
def test_sample_ids_never_escape_the_output_folder(sid, tmp_path):
    if sid == "ABS":
        sid = str(tmp_path / "abs" / "x")
    res, out = _run(tmp_path, _manifest(tmp_path, [(sid, str(CMU)), ("good", str(CMU))]))
    assert res.exit_code == 1, res.output
    kind, msg = _failures(out)[sid]
    assert kind == "InvalidArgumentError" and "cannot name an output file" in msg
    assert (out / "good.pt").exists()
    assert _files_outside(tmp_path, out) == []
    assert not list(out.rglob("*.lock")) and not (tmp_path / "abs").exists()


@hostile("slide-name-control-chars", "slide names holding NUL, a newline or U+2028 (API jobs)",
         "each fails 'holds control characters [...]' before any file is made; the good slide "
         "is done")
def test_control_characters_in_names(tmp_path):
    ext = tiny_extractor(tmp_path / "tiny")
    out = tmp_path / "bags"
    names = ["a\x00b", "a\nb", "a\u2028b"]
    report = generate_bags([SlideJob(n, slide_path=CMU) for n in names]
                           + [SlideJob("good", slide_path=CMU)], ext, out, 112, 224,
                           progress=False)
    assert list(report.done) == ["good"]
    assert set(report.failed) == set(names)
    assert all("control characters" in why for why in report.failed.values())
    assert sorted(p.name for p in out.iterdir()) == ["bags_config.json", "failures.csv",
                                                     "good.index.npz", "good.pt", "summary.json"]


@hostile("csv-formula-injection", "a sample_id '=HYPERLINK(\"http://x\",\"y\")' whose image is "
         "missing; the same name in annotations written by slideflow",
         "failures.csv holds the cell as text (\"'=HYPERLINK...\", was copied verbatim); "
         "annotations round-trip the name unchanged")
def test_formula_cells_are_neutralised(tmp_path):
    import pandas as pd

    from slideflow.annotations import read_annotations, write_annotations

    evil = '=HYPERLINK("http://x","y")'
    res, out = _run(tmp_path, _manifest(tmp_path, [(evil, str(tmp_path / "gone.svs"))]))
    assert res.exit_code == 1, res.output
    text = (out / "failures.csv").read_text()
    assert "'=HYPERLINK" in text and ',=HYPERLINK' not in text and '"=HYPERLINK' not in text
    df = pd.DataFrame({"patient": [evil, "-2+3"], "slide": [evil, "@cmd"]}, dtype=str)
    path = write_annotations(df, tmp_path / "annotations.csv")
    assert "'=HYPERLINK" in path.read_text() and "'@cmd" in path.read_text()
    assert read_annotations(path)["slide"].tolist() == [evil, "@cmd"]


@hostile("manifest-100k-rows", "a 100,000-row manifest given to features",
         "its jobs are built in well under 10 s (the duplicate check was quadratic: 568 s)")
def test_large_manifest_is_read_in_linear_time(tmp_path):
    from slideflow.cli import _jobs

    manifest = _manifest(tmp_path, [(f"s{i}", f"s{i}.svs") for i in range(100_000)])
    t0 = time.perf_counter()
    jobs = _jobs([], manifest, False, None, None)
    assert len(jobs) == 100_000 and time.perf_counter() - t0 < 10
