"""Usage errors from the real entry point (a subprocess): click's short usage, one `error:`
line, exit 2, never a traceback -- whatever copy of click typer carries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import slideflow as sf

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "slideflow", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args, usage, message", [
    (["--bogus"], "Usage: slideflow [OPTIONS] COMMAND", "error: No such option: --bogus"),
    (["bogus"], "Usage: slideflow [OPTIONS] COMMAND", "error: No such command 'bogus'."),
    (["features", "--tile-px", "abc"], "Usage: slideflow features [OPTIONS]",
     "error: Invalid value for '--tile-px'"),
    (["info"], "Usage: slideflow info [OPTIONS]", "error: Missing argument"),
    (["features", "--bogus"], "Usage: slideflow features [OPTIONS]",
     "error: No such option: --bogus"),
    (["features", "--tile-px"], None,  # click's parser gives this error no context
     "error: Option '--tile-px' requires an argument."),
])
def test_usage_error_is_one_line_and_exit_2(args, usage, message):
    res = run_cli(*args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    if usage is not None:
        assert lines[0].startswith(usage)
        assert lines[1].startswith("Try 'slideflow") and lines[1].endswith("--help' for help.")
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), res.stderr
    assert lines[-1] == errors[0]


def test_no_arguments_shows_the_help():
    res = run_cli()
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr
    assert res.stdout.startswith("Usage: slideflow [OPTIONS] COMMAND [ARGS]...")
    for command in ("features", "extractors", "info", "doctor"):
        assert f"\n  {command} " in res.stdout
    assert res.stdout.count("Usage:") == 1  # printed once


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout == f"slideflow {sf.__version__}\n"


def test_help_lists_flags_without_types():
    res = run_cli("--help")
    assert res.returncode == 0 and "--version" in res.stdout
    assert "<bool>" not in res.stdout and "--help     Show this message" in res.stdout
    sub = run_cli("features", "--help")
    assert sub.returncode == 0 and "<bool>" not in sub.stdout
    assert all(len(line) <= 80 for line in res.stdout.splitlines())


def test_run_error_without_traceback(tmp_path):
    """A SlideflowError raised by a command: `error:` line, exit 2, no traceback."""
    res = run_cli("features", "--manifest", str(tmp_path / "missing.csv"), "-o",
                  str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "missing.csv" in res.stderr


def test_typer_click_pins_match_the_lock():
    """The error handling is tested on the typer/click the lock file pins."""
    import importlib.metadata as md

    lock = (ROOT / "requirements-lock.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lock if "==" in line)
    assert pins["typer"] == md.version("typer") and pins["click"] == md.version("click")


def test_missing_slide_is_refused_before_any_model_is_built(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import slideflow.model
    from slideflow.cli import app

    def boom(*a, **k):
        raise AssertionError("the model was built before the inputs were checked")

    monkeypatch.setattr(slideflow.model, "build_feature_extractor", boom)
    res = CliRunner().invoke(app, ["features", str(tmp_path / "typo.svs"), "-o",
                                   str(tmp_path / "out")])
    assert res.exit_code == 2 and "typo.svs" in res.output
    assert not (tmp_path / "out").exists()
    proc = run_cli("features", str(tmp_path / "typo.svs"), "-e", "uni")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: no such slide file or folder: {tmp_path / 'typo.svs'}"


def test_each_failure_printed_once_and_no_pydicom_noise(tmp_path, slides):
    """Two failing slides next to a good one: each reason printed once; the Camelyon DICOM's
    over-long UID warning from pydicom is not printed; exit 1."""
    from hostile.tiny import plugin_args

    from conftest import CMU, DICOM_CAMELYON, TCGA_J2K

    folder = tmp_path / "slides"
    folder.mkdir()
    for p in (CMU, DICOM_CAMELYON, TCGA_J2K):
        (folder / p.name).symlink_to(p)
    res = run_cli("features", str(folder), "-o", str(tmp_path / "bags"),
                  *plugin_args(tmp_path / "tiny"), "--tile-px", "112", "--tile-um", "224",
                  "--qc", "none")
    text = res.stdout + res.stderr
    assert res.returncode == 1, text
    assert "1 done, 0 reused, 2 failed" in res.stdout
    assert text.count("records no microns-per-pixel") == 1
    assert text.count("would need upsampling") == 1
    assert "--mpp" in text  # the CLI's fix, not sf.WSI(..., mpp=)
    assert "VR UI" not in text and "Traceback" not in text


def test_info_on_a_missing_slide(tmp_path):
    res = run_cli("info", str(tmp_path / "nope.svs"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.svs'}: no such slide file or folder"]


@pytest.mark.parametrize("flag", ["--slides-in-flight", "--num-threads"])
def test_extract_tiles_counts_are_checked_first(tmp_path, flag):
    """A bad count is one `error:` line and exit 2, before the project is even opened."""
    res = run_cli("extract-tiles", str(tmp_path / "no-project"), flag, "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: {flag} must be an integer >= 1, got 0"


def test_extract_tiles_passes_the_counts_to_the_scheduler(cmu_slides_project, monkeypatch):
    from typer.testing import CliRunner

    import slideflow.project.dataset_work as work
    from slideflow.cli import app

    seen = {}
    real = work.run_jobs

    def spy(*a, **k):
        seen.update(num_threads=k["num_threads"], slides_in_flight=k["slides_in_flight"])
        return real(*a, **k)

    monkeypatch.setattr(work, "run_jobs", spy)
    res = CliRunner().invoke(app, ["extract-tiles", str(cmu_slides_project.root), "--tile-px",
                                   "64", "--tile-um", "256", "--qc", "none",
                                   "--num-threads", "1", "--slides-in-flight", "1"])
    assert res.exit_code == 0, res.output
    assert seen == {"num_threads": 1, "slides_in_flight": 1}
