"""bags_config.json: what made the bags of a folder, in Slideflow 3's layout plus our provenance.

Slideflow 3 (docs "Generating features" / `rebuild_extractor`) writes, beside the bags:

    {"extractor": {"class": "slideflow.model.extractors.retccl.RetCCLFeatures",
                   "kwargs": {"center_crop": true}},
     "normalizer": {"method": "macenko", "fit": {...}} | null,
     "num_features": 2048, "tile_px": 299, "tile_um": 302}

We keep those keys and add a `provenance` block (package version, extractor name, weights
sha256, precision, tile selection / QC settings, ...). `slideflow_provenance` is read as a
synonym. Slideflow ignores keys it does not know, so the file works in both projects.

`check_compatible` refuses to mix bags made with different settings in one folder. Compared:
every Slideflow key (extractor class + kwargs, normalizer method + fit, num_features, tile_px,
tile_um) and every provenance key present on both sides, except the volatile ones in
`VOLATILE_KEYS` (versions, timestamps, host, licence text, output format), which do not change
the feature values. A provenance block missing on one side (a folder made by Slideflow 3) is not
a mismatch by itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BagError, BagsConfigError, BagsConfigMismatchError
from .atomic import write_json_atomic
from .base import to_json

CONFIG_NAME = "bags_config.json"
SLIDEFLOW_KEYS = ("extractor", "normalizer", "num_features", "tile_px", "tile_um")
PROVENANCE_KEYS = ("provenance", "slideflow_provenance")
VOLATILE_KEYS = frozenset({
    "slideflow_version", "version", "package_version", "torch_version", "python_version",
    "created", "created_at", "timestamp", "date", "time", "seconds", "elapsed", "duration",
    "hostname", "host", "user", "platform", "command", "argv", "weights_files",
    "license", "citation", "format",
})


#: where our own {class, kwargs} sits when the extractor entry names Slideflow 3's class
#: (`slideflow.model.extractors.sf3_config`)
OWN_EXTRACTOR_KEY = "slideflow"


def own_extractor(ext_cfg: Any) -> Any:
    """Our ``{class, kwargs}`` of an extractor entry: the nested one when the entry names
    Slideflow 3's class, else the entry itself."""
    nested = ext_cfg.get(OWN_EXTRACTOR_KEY) if isinstance(ext_cfg, Mapping) else None
    return nested if isinstance(nested, Mapping) else ext_cfg


def config_path(outdir_or_file: str | os.PathLike) -> Path:
    p = Path(outdir_or_file)
    return p if p.suffix == ".json" else p / CONFIG_NAME


def config_file(outdir: str | os.PathLike, fmt: str = "pt", encoder: str | None = None) -> Path:
    """Where a run's config goes: `<outdir>/bags_config.json`, or one file per extractor for
    AtlasPatch folders (`bags_config.<encoder>.json`: several extractors share its files)."""
    if fmt == "atlaspatch" and encoder:
        return Path(outdir) / f"bags_config.{encoder}.json"
    return config_path(outdir)


def _per_encoder(folder: Path) -> list[Path]:
    return sorted(folder.glob("bags_config.*.json")) if folder.is_dir() else []


def normalize(obj: Any) -> Any:
    """Plain-JSON form (tuples -> lists, numpy -> Python), as it reads back from disk."""
    return json.loads(json.dumps(to_json(obj)))


def provenance_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    for key in PROVENANCE_KEYS:
        if isinstance(cfg.get(key), Mapping):
            return dict(cfg[key])
    return {}


def write_bags_config(outdir: str | os.PathLike, cfg: Mapping[str, Any]) -> Path:
    """Write `<outdir>/bags_config.json` atomically (sorted keys: identical reruns, same bytes)."""
    missing = [k for k in SLIDEFLOW_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"bags_config needs the Slideflow keys {missing}")
    dest = config_path(outdir)
    write_json_atomic(dest, normalize(dict(cfg)))
    return dest


def read_bags_config(outdir_or_file: str | os.PathLike, *,
                     missing_ok: bool = False) -> dict[str, Any] | None:
    """Read a folder's bags_config.json (or the file itself); None if absent and missing_ok."""
    path = config_path(outdir_or_file)
    folder = Path(outdir_or_file)
    if not path.exists() and path.parent == folder:
        found = _per_encoder(folder)  # an AtlasPatch folder: one config per extractor
        if len(found) == 1:
            path = found[0]
        elif len(found) > 1:
            raise BagError(f"{folder}: holds bags of several extractors "
                           f"({', '.join(p.name for p in found)}); pass one of these files")
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise BagError(f"{path}: not found (a bag folder made by generate_feature_bags "
                       "has one)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BagsConfigError(f"{path}: unreadable ({e})") from e
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise BagsConfigError(f"{path}: not valid JSON ({e}); fix or delete it") from e
    if not isinstance(cfg, dict):
        raise BagsConfigError(f"{path}: expected a JSON object")
    return cfg


def _canonical_tile_um(value: Any) -> Any:
    if isinstance(value, str):
        s = value.strip().lower()
        try:
            return float(s)
        except ValueError:
            return s
    return value


def _diff(a: Any, b: Any, prefix: str, out: list[str], skip_volatile: bool) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if skip_volatile and key in VOLATILE_KEYS:
                continue
            _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key, out,
                  skip_volatile)
    elif a != b:
        out.append(prefix)


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two bags configs (see module doc)."""
    old, new = normalize(dict(old)), normalize(dict(new))
    out: list[str] = []
    for key in SLIDEFLOW_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "extractor":  # ours decides; Slideflow 3's form is derived from it
            a, b = own_extractor(a), own_extractor(b)
        if key == "tile_um":
            a, b = _canonical_tile_um(a), _canonical_tile_um(b)
        _diff(a, b, key, out, skip_volatile=False)
    pa, pb = provenance_of(old), provenance_of(new)
    for key in sorted(set(pa) & set(pb) - VOLATILE_KEYS):
        _diff(pa[key], pb[key], f"provenance.{key}", out, skip_volatile=True)
    return out


def check_compatible(outdir: str | os.PathLike, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """Raise BagsConfigMismatchError if `outdir` holds bags made with other settings.

    Returns the existing config (None when the folder has none yet).
    """
    existing = read_bags_config(outdir, missing_ok=True)
    if existing is None:
        return None
    diffs = diff_configs(existing, cfg)
    if diffs:
        err = BagsConfigMismatchError(
            f"{config_path(outdir)}: this folder holds bags made with other settings "
            f"(differing: {', '.join(diffs)}); use a new output folder, or "
            "force_regenerate=True to redo every bag with the new settings")
        err.keys = diffs  # type: ignore[attr-defined]
        raise err
    return existing


__all__ = ["CONFIG_NAME", "OWN_EXTRACTOR_KEY", "VOLATILE_KEYS", "own_extractor", "check_compatible", "config_file", "diff_configs", "normalize",
           "provenance_of", "read_bags_config", "write_bags_config"]
