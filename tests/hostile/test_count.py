"""The hostile corpus states its size, and README's Reliability table lists every case."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from . import cases

#: the number of hostile cases; change it together with README's Reliability table
HOSTILE_CASES = 119


def _all_cases() -> dict[str, tuple[str, str]]:
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.name.startswith("test_") and info.name != "test_count":
            importlib.import_module(f"{__package__}.{info.name}")
    return cases.CASES


def test_hostile_case_count_and_readme_table():
    found = _all_cases()
    print(f"\n{len(found)} hostile cases: " + ", ".join(sorted(found)))
    assert len(found) == HOSTILE_CASES
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M))
    assert listed == set(found), (sorted(set(found) - listed), sorted(listed - set(found)))
    assert f"{HOSTILE_CASES} hostile cases" in section
