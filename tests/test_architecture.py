"""The import-linter layer contract (pyproject.toml) covers every module of the package, so a
new module cannot sit outside the layers unnoticed (lint-imports itself runs in `make test`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI and make use 3.11)

ROOT = Path(__file__).resolve().parents[1]


def _layers(container: str = "slideflow") -> list[str]:
    """The layers of the contract whose modules are `container`'s children."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in cfg["contracts"] if c["type"] == "layers"
                 and c["layers"][0].split()[0].rsplit(".", 1)[0] == container]
    return layers


def test_every_top_level_module_is_in_a_layer():
    named = {m for layer in _layers() for m in re.split(r"\s*[|:]\s*", layer)}
    package = ROOT / "slideflow"
    modules = {f"slideflow.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"slideflow.{p.name}" for p in package.iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert modules - named == set(), "add these modules to [tool.importlinter] layers"
    assert named - modules == set(), "layers name modules that do not exist"


def test_every_engine_module_is_in_an_engine_layer():
    """The engine's own stack (second layers contract) names every module of slideflow/engine/."""
    named = {m for layer in _layers("slideflow.engine") for m in re.split(r"\s*[|:]\s*", layer)}
    package = ROOT / "slideflow" / "engine"
    modules = {f"slideflow.engine.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"slideflow.engine.{p.name}" for p in package.iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert modules - named == set(), "add these modules to the engine's layers in pyproject.toml"
    assert named - modules == set(), "the engine's layers name modules that do not exist"
