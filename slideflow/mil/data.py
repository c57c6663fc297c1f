"""Bags and labels for MIL: which slides form each bag, read once per run.

A `.pt` bag is memory-mapped (``torch.load(mmap=True)``): the OS page cache holds it after the
first epoch and no epoch re-reads or copies a whole bag; other formats are read into memory
once. Patient aggregation joins all of a patient's slides into one bag.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import BagError
from ..io.bags import bag_format, list_bags, read_bag, slide_of
from ..io.bags_config import diff_configs, read_bags_config
from .config import MILError

log = logging.getLogger("slideflow")


def bag_paths(bags: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, Path]:
    """{slide: bag file} from a bag folder, a list of folders, or a list of bag files."""
    items = [bags] if isinstance(bags, (str, os.PathLike)) else list(bags)
    out: dict[str, Path] = {}
    for item in items:
        p = Path(item)
        if not p.exists():
            raise MILError(f"{p}: bags not found (give the folder made by "
                           "generate_feature_bags, or bag files)")
        for f in (list_bags(p) if p.is_dir() and p.suffix.lower() != ".zarr" else [p]):
            name = slide_of(f)
            if name in out and out[name] != f:
                raise MILError(f"slide {name!r} has two bags: {out[name]} and {f}")
            out[name] = f
    return out


def bags_extractor(paths: Iterable[Path]) -> dict[str, Any] | None:
    """The one bags_config.json shared by the folders of `paths` (None if they carry none).

    Bags made with different extractors or tile geometries are refused: a model trained on
    one cannot read the other.
    """
    found: dict[Path, dict[str, Any] | None] = {}
    for p in paths:
        folder = p.parent.parent if p.parent.name == "patches" else p.parent
        if folder not in found:
            found[folder] = read_bags_config(folder, missing_ok=True)
    configs = [(f, c) for f, c in found.items() if c is not None]
    if not configs:
        return None
    first_folder, first = configs[0]
    for folder, cfg in configs[1:]:
        diffs = diff_configs(first, cfg)
        if diffs:
            raise MILError(f"bags in {first_folder} and {folder} were made with different "
                           f"settings ({', '.join(diffs)}); use bags of one extractor and "
                           "tile geometry")
    return first


def check_same_extractor(model_cfg: Mapping[str, Any] | None, bags_cfg: Mapping[str, Any] | None,
                         model_where: str, bags_where: str) -> None:
    """Refuse bags whose extractor or tile geometry differ from the ones the model saw."""
    if model_cfg is None or bags_cfg is None:
        return
    diffs = diff_configs(model_cfg, bags_cfg)
    if diffs:
        def name(cfg: Mapping[str, Any]) -> str:
            prov = cfg.get("provenance") or {}
            ext = prov.get("extractor") or (cfg.get("extractor") or {}).get("class")
            return f"{ext} @ {cfg.get('tile_px')}px/{cfg.get('tile_um')}"
        raise MILError(f"the bags ({bags_where}: {name(bags_cfg)}) differ from the model's "
                       f"({model_where}: {name(model_cfg)}) in {', '.join(diffs)}; make bags "
                       "with the model's extractor and tile geometry")


class BagStore:
    """Features of each slide, read once (memory-mapped .pt, other formats in memory)."""

    def __init__(self, paths: Mapping[str, Path]):
        self.paths = dict(paths)
        self._features: dict[str, np.ndarray] = {}
        self._keep: list[Any] = []

    def features(self, slide: str) -> np.ndarray:
        if slide not in self._features:
            self._features[slide] = self._read(self.paths[slide])
        return self._features[slide]

    def _read(self, path: Path) -> np.ndarray:
        if bag_format(path) == "pt":
            import torch

            try:
                t = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a BagError
                raise BagError(f"{path}: not a readable .pt bag ({type(e).__name__}: {e})"
                               ) from e
            if not isinstance(t, torch.Tensor) or t.ndim != 2:
                raise BagError(f"{path}: expected a 2-D tensor (N, D)")
            self._keep.append(t)
            return t.numpy() if t.dtype == torch.float32 else t.float().numpy()
        return read_bag(path).features

    def coords(self, slide: str) -> np.ndarray:
        """Top-left level-0 coordinates of the slide's tiles (read on demand)."""
        return read_bag(self.paths[slide]).coords


@dataclass
class Labels:
    """Bag keys (slides or patients, sorted), their slides and targets."""

    keys: list[str]
    slides: dict[str, list[str]]
    y: np.ndarray
    class_names: list[str] = field(default_factory=list)


def annotation_table(dataset: Any) -> pd.DataFrame:
    """slide / patient / outcome columns of a Dataset, or a DataFrame given directly."""
    if isinstance(dataset, pd.DataFrame):
        df = dataset.copy()
        if "slide" not in df.columns:
            raise MILError("a DataFrame dataset needs a 'slide' column")
        if "patient" not in df.columns:
            df["patient"] = df["slide"]
        return df.astype({"slide": str, "patient": str})
    df = dataset.annotations
    names = set(dataset.slides())
    return df[df["slide"].isin(names)].reset_index(drop=True)


def outcome_column(outcomes: str | Sequence[str]) -> str:
    cols = [outcomes] if isinstance(outcomes, str) else list(outcomes)
    if len(cols) != 1:
        raise MILError(f"one outcome column is supported, got {cols}")
    return str(cols[0])


def make_labels(df: pd.DataFrame, outcome: str, available: Iterable[str], level: str,
                classification: bool, class_names: Sequence[str] | None = None,
                what: str = "dataset") -> Labels:
    """Group the annotated slides that have bags into bags of `level` with their targets."""
    if outcome not in df.columns:
        raise MILError(f"{what}: no annotation column {outcome!r} (columns: "
                       f"{', '.join(map(str, df.columns))})")
    have = set(available)
    missing = sorted(set(df["slide"]) - have)
    if missing:
        log.warning("%s: %d slide(s) have no bag and are skipped: %s", what, len(missing),
                    ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    df = df[df["slide"].isin(have)]
    values = df[outcome].astype(str).str.strip()
    blank = sorted(df["slide"][values.isin(["", "nan", "None"])])
    if blank:
        raise MILError(f"{what}: {len(blank)} slide(s) have a blank {outcome!r}: "
                       f"{', '.join(blank[:5])}; filter them out (filter_blank)")
    key_col = "slide" if level == "slide" else "patient"
    groups: dict[str, list[str]] = {}
    target: dict[str, str] = {}
    for key, slide, value in zip(df[key_col].astype(str), df["slide"], values):
        groups.setdefault(key, []).append(slide)
        if target.setdefault(key, value) != value:
            raise MILError(f"{what}: patient {key!r} has slides with different {outcome!r} "
                           f"({target[key]!r} and {value!r}); fix the annotations or use "
                           "aggregation_level='slide'")
    if not groups:
        raise MILError(f"{what}: no slide has both an annotation and a bag")
    keys = sorted(groups)
    if classification:
        names = list(class_names) if class_names is not None else sorted(set(target.values()))
        pos = {n: i for i, n in enumerate(names)}
        unknown = sorted({target[k] for k in keys} - set(pos))
        if unknown:
            raise MILError(f"{what}: outcome values {unknown} were not seen in training "
                           f"(classes: {names})")
        y = np.array([pos[target[k]] for k in keys], np.int64)
    else:
        names = []
        try:
            y = np.array([float(target[k]) for k in keys], np.float32)
        except ValueError:
            raise MILError(f"{what}: column {outcome!r} is not numeric; use "
                           "loss='cross_entropy' for a categorical outcome") from None
    return Labels(keys, {k: sorted(groups[k]) for k in keys}, y, names)


def sample_batch(store: BagStore, labels: Labels, order: Sequence[int], bag_size: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A padded (B, W, D) batch and its (B, W) mask: up to `bag_size` tiles drawn without
    replacement from each bag (all of them, in order, when the bag is smaller); W is bag_size,
    or the largest bag of the batch when all are smaller."""
    bags = [[store.features(s) for s in labels.slides[labels.keys[i]]] for i in order]
    width = min(bag_size, max(sum(len(p) for p in parts) for parts in bags))
    x = np.zeros((len(order), width, bags[0][0].shape[1]), np.float32)
    mask = np.zeros((len(order), width), bool)
    for row, parts in enumerate(bags):
        sizes = [len(p) for p in parts]
        n = sum(sizes)
        pick = np.sort(rng.choice(n, bag_size, replace=False)) if n > bag_size else np.arange(n)
        starts = np.cumsum([0, *sizes])
        for j, part in enumerate(parts):  # gathered straight into the batch: one copy
            sel = pick if len(parts) == 1 else \
                pick[(pick >= starts[j]) & (pick < starts[j + 1])] - starts[j]
            at = 0 if len(parts) == 1 else int(np.searchsorted(pick, starts[j]))
            np.take(part, sel, axis=0, out=x[row, at:at + len(sel)])
        mask[row, :min(n, width)] = True
    return x, mask


def full_bag(store: BagStore, labels: Labels, i: int) -> np.ndarray:
    """Every tile of bag `i` (its slides in sorted order), for evaluation."""
    parts = [store.features(s) for s in labels.slides[labels.keys[i]]]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


__all__ = ["BagStore", "Labels", "annotation_table", "bag_paths", "bags_extractor",
           "check_same_extractor", "full_bag", "make_labels", "outcome_column", "sample_batch"]
