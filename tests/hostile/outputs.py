"""What an output folder holds, for the disk-full tests (also imported by disk_full_probe.py,
which runs as a script)."""

from __future__ import annotations

import os
from pathlib import Path

TMP_MARK = ".tmp-"  # slideflow.io.atomic.TMP_MARK (kept import-free for the probe script)


def outputs(folder: Path) -> list[str]:
    """Files under `folder`, relative and sorted; a .zarr store counts as one entry."""
    out: list[str] = []
    if not folder.exists():
        return out
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for d in [d for d in dirs if d.endswith(".zarr")]:
            out.append(str(rel / d))
            dirs.remove(d)
        out += [str(rel / f) for f in files]
    return sorted(out)


def leftovers(names: list[str]) -> list[str]:
    """Temporary files and locks among `names` (none may survive a failed write)."""
    return [n for n in names if TMP_MARK in n or n.endswith(".lock")]


def bag_files(fmt: str, *slides: str, extractor: str = "resnet18_imagenet") -> list[str]:
    """What a bag folder of `slides` holds after a run: the bags, the config and the run's
    summary.json and failures.csv."""
    run_files = ["failures.csv", "summary.json"]
    if fmt == "pt":
        names = [f"{s}{x}" for s in slides for x in (".index.npz", ".pt")] + ["bags_config.json"]
    elif fmt == "atlaspatch":
        names = [f"patches/{s}.h5" for s in slides] + [f"bags_config.{extractor}.json"]
    else:
        names = [f"{s}.{fmt}" for s in slides] + ["bags_config.json"]
    return sorted(names + run_files)
