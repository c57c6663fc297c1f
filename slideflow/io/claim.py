"""A bag folder holds one configuration: claimed at the start of a run, re-checked before every
commit, and `force` leaves no file that the configuration does not describe.

    claim = claim_config(config_file, cfg, force=False)   # at the start of a run
    ...
    verify_claim(config_file, cfg)                        # before each bag is moved into place

`claim_config` runs under a short lock (`<folder>/<config name>.lock`, `slideflow.io.locks`), so
two runs that start at the same instant see each other: the first writes the folder's
`bags_config.json`, a second with the same settings (a shard of the same run) cooperates, and a
second with other settings gets a `BagsConfigMismatchError` naming the folder and each differing
setting with both values. With `force`, the old configuration (and, through `supersede`, every
bag it no longer describes) is moved to `<folder>/.superseded-<UTC time>/`: never deleted.

Compared: every Slideflow key (extractor, normalizer, num_features, tile_px, tile_um), the
non-volatile provenance (see `bags_config.diff_configs`) and the output format.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BagsConfigError, BagsConfigMismatchError, SlideflowError
from .bags_config import (
    diff_configs,
    normalize,
    provenance_of,
    read_bags_config,
    write_bags_config,
)
from .locks import SlideLock, clean_stale_temps

SUPERSEDED_PREFIX = ".superseded-"
#: seconds a run waits for another run's claim (a few file operations) before giving up
CLAIM_WAIT_SECONDS = 60.0


@dataclass
class Claim:
    """What claiming a folder did: `created` a new config, or found the same one; with force,
    where the old config and stale bags went (`superseded`, a folder) and which files moved."""

    config: Path
    created: bool = False
    superseded: Path | None = None
    moved: list[Path] = field(default_factory=list)


def _value(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    parts = dotted.split(".")
    if parts[0] == "provenance":
        node, parts = provenance_of(cfg), parts[1:]
    for p in parts:
        node = node.get(p) if isinstance(node, Mapping) else None
    return node


def _short(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def differences(existing: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """'key: <ours> here, <theirs> in the folder' for each differing setting (format too)."""
    old, new = normalize(dict(existing)), normalize(dict(cfg))
    keys = diff_configs(old, new)
    fa, fb = provenance_of(old).get("format"), provenance_of(new).get("format")
    if fa is not None and fb is not None and fa != fb:
        keys.append("provenance.format")
    return [f"{k}: {_short(_value(new, k))} here, {_short(_value(old, k))} in the folder"
            for k in keys]


def _mismatch(path: Path, diffs: list[str], during: bool = False) -> BagsConfigMismatchError:
    when = ("was claimed by another run with other settings while this run was writing"
            if during else "holds bags made with other settings")
    err = BagsConfigMismatchError(
        f"{path.parent}: this folder {when} ({path.name} differs in {'; '.join(diffs)}); use "
        "a new output folder, or force_regenerate=True / --force to move the old bags aside "
        f"(to {path.parent}/{SUPERSEDED_PREFIX}<time>/) and redo every bag")
    err.keys = [d.split(":", 1)[0] for d in diffs]  # type: ignore[attr-defined]
    return err


def _folder_lock(path: Path) -> Any:
    """The folder's claim lock, waited for (claims take milliseconds)."""
    lock = SlideLock(path.parent, path.name)
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while not lock.acquire():
        if time.monotonic() > deadline:
            raise SlideflowError(f"{path}: could not claim the folder: its claim lock is held "
                                 f"by {lock.holder()} for more than {CLAIM_WAIT_SECONDS:.0f} s")
        time.sleep(0.02)
    return lock


def superseded_dir(folder: Path) -> Path:
    """A new `<folder>/.superseded-<UTC time>[-n]/` for files a forced run moves aside."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        d = folder / f"{SUPERSEDED_PREFIX}{stamp}{'' if n == 0 else f'-{n}'}"
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise SlideflowError(f"{folder}: too many {SUPERSEDED_PREFIX}{stamp}* folders")


def move_aside(paths: Iterable[Path], folder: Path, dest: Path | None) -> tuple[Path | None,
                                                                                  list[Path]]:
    """Move `paths` (files or folders inside `folder`) into `dest` (created on first use),
    keeping their relative paths; returns (dest, moved). Never deletes anything."""
    moved = []
    for p in paths:
        if not os.path.lexists(p):
            continue
        dest = dest or superseded_dir(folder)
        target = dest / p.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(target))  # same filesystem: a rename
        moved.append(p)
    return dest, moved


def claim_config(path: str | os.PathLike, cfg: Mapping[str, Any], *, force: bool = False
                 ) -> Claim:
    """Claim a bag folder for `cfg` (see module doc); returns what was done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _folder_lock(path)
    try:
        clean_stale_temps(path.parent, path.name)  # a config write of a killed run
        try:
            existing = read_bags_config(path, missing_ok=True)
        except BagsConfigError:
            if not force:
                raise
            existing = {}  # unreadable: moved aside below
        if existing is None:
            write_bags_config(path, cfg)
            return Claim(path, created=True)
        diffs = differences(existing, cfg) if existing else ["(unreadable)"]
        if not diffs:
            return Claim(path)
        if not force:
            raise _mismatch(path, diffs)
        dest, moved = move_aside([path], path.parent, None)
        write_bags_config(path, cfg)
        return Claim(path, created=True, superseded=dest, moved=moved)
    finally:
        lock.release()


def verify_claim(path: str | os.PathLike, cfg: Mapping[str, Any]) -> None:
    """Raise BagsConfigMismatchError unless the folder's config still describes `cfg` (called
    before a bag is moved into place, so a run never commits into a folder another run took)."""
    path = Path(path)
    try:
        existing = read_bags_config(path, missing_ok=True)
    except BagsConfigError as exc:
        raise _mismatch(path, [f"unreadable ({exc})"], during=True) from exc
    if existing is None:
        raise _mismatch(path, ["the file was removed"], during=True)
    diffs = differences(existing, cfg)
    if diffs:
        raise _mismatch(path, diffs, during=True)


__all__ = ["Claim", "SUPERSEDED_PREFIX", "claim_config", "differences", "move_aside",
           "superseded_dir", "verify_claim"]
