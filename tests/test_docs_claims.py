"""Claims the user docs make about the code, checked (a doc that drifts fails here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = sorted(p.stem if p.is_file() else p.name for p in (ROOT / "slideflow").iterdir()
                     if (p.suffix == ".py" or (p / "__init__.py").exists())
                     and p.name != "__init__.py")
    missing = [m for m in modules if not re.search(rf"\b{m}\b", text)]
    assert not missing, f"docs/architecture.md does not name {missing}"
    assert "`extract.py`" not in text  # a package now


def test_user_docs_carry_no_dates_or_private_paths():
    for doc in USER_DOCS:
        text = doc.read_text()
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{doc.name} carries a date"
        assert "/work/" not in text, f"{doc.name} links outside the repository"
        assert not re.search(r"\b(earlier|no|previous|this) sessions?\b|sessions? that wrote",
                             text), f"{doc.name} mentions the sessions that wrote it"


def test_bags_config_is_claimed_when_a_run_starts(tmp_path):
    """outputs.md: bags_config.json is claimed when a run starts, before any slide is read (a
    run whose every slide fails still leaves it)."""
    from hostile.tiny import tiny_extractor

    from slideflow.features import SlideJob, generate_bags

    assert "claimed when a run starts" in (ROOT / "docs" / "outputs.md").read_text()
    ext = tiny_extractor(tmp_path / "tiny")
    report = generate_bags([SlideJob("gone", tmp_path / "gone.svs")], ext, tmp_path / "bags",
                           64, 128, progress=False)
    assert list(report.failed) == ["gone"]
    cfg = json.loads((tmp_path / "bags" / "bags_config.json").read_text())
    assert cfg["tile_px"] == 64


def test_missing_mpp_error_names_the_cli_fix(slides):
    import pytest

    import slideflow as sf
    from slideflow.errors import MissingMPPError

    from conftest import TCGA_J2K

    with pytest.raises(MissingMPPError) as info:
        sf.WSI(TCGA_J2K, 224, 112)
    assert "--mpp" in str(info.value) and "--mpp-csv" in str(info.value)
