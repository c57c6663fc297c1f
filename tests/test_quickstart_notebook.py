"""docs/quickstart.ipynb runs top to bottom in a Jupyter kernel, on the test slide (issue 12).

The kernel is the interpreter running the tests (a kernel spec written for this test), with
this checkout first on its path, so a fresh CI venv needs no registered kernel.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import CMU

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"
KERNEL = "slideflow-tests"


def _kernel_spec(folder: Path) -> Path:
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "slideflow tests", "language": "python"}))
    return folder


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream")


def test_quickstart_notebook_runs(tmp_path, monkeypatch, slides):
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec(tmp_path / "jupyter")))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("SLIDEFLOW_SAMPLE_SLIDE", str(CMU))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(run_dir)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "CMU-1-Small-Region.svs" in out
    assert "grid tiles: 24" in out and "after QC: 10 of 24" in out
    assert "done 10 tiles" in out
    assert "(10, 1280)" in out and "identical: True" in out
    assert "grid: (6, 4, 1280) tiles: 10" in out
    assert (run_dir / "quickstart" / "project" / "settings.json").exists()
    errs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("name") == "stderr")
    assert "TqdmWarning" not in errs and "IProgress" not in errs, errs  # third-party noise
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the QC preview and the heat map
