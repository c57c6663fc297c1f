"""The README's Python tour runs top to bottom as pasted: its code blocks, in order, in one
fresh interpreter, on the test slide (the sample-slide cache points at it: no network)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import CMU

ROOT = Path(__file__).resolve().parents[1]


def tour_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick tour (Python)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_tour_runs_as_pasted(tmp_path, slides):
    blocks = tour_blocks()
    assert len(blocks) >= 2 and "sf.data.sample_slide()" in blocks[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "CMU-1-Small-Region.svs").symlink_to(CMU)  # what sample_slide() would fetch
    work = tmp_path / "work"
    work.mkdir()
    script = work / "tour.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLIDEFLOW_CACHE": str(cache)}
    res = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert (work / "preview.png").exists()
    bags = work / "proj" / "pt_files" / "efficientnet_lite0_imagenet"
    assert (bags / "CMU-1-Small-Region.pt").exists() and (bags / "bags_config.json").exists()
    assert (work / "bags_h5" / "CMU-1-Small-Region.h5").exists()
    assert list((work / "proj").rglob("extraction_report.html"))
