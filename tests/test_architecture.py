"""The import-linter layer contract (pyproject.toml) covers every module of the package, so a
new module cannot sit outside the layers unnoticed (lint-imports itself runs in `make test`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI and make use 3.11)

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in cfg["contracts"] if c["type"] == "layers"]
    return layers


def test_every_top_level_module_is_in_a_layer():
    named = {m for layer in _layers() for m in re.split(r"\s*[|:]\s*", layer)}
    package = ROOT / "slideflow"
    modules = {f"slideflow.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"slideflow.{p.name}" for p in package.iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert modules - named == set(), "add these modules to [tool.importlinter] layers"
    assert named - modules == set(), "layers name modules that do not exist"
