"""k-fold splits that never split a patient (Slideflow 3: ``Dataset.kfold_split``).

Patients are shuffled with a fixed seed and dealt to folds within each label, so folds are
stratified and reproducible; with `preserved_site`, whole sites are dealt instead (site-preserved
cross-validation: no site is in both train and validation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DatasetError


def _units(df: pd.DataFrame, unit_col: str, label_of: Mapping[str, str] | None
           ) -> dict[str, str]:
    """{patient or site: its label ('' when unstratified)}; one label per unit."""
    out: dict[str, str] = {}
    for unit, slide in zip(df[unit_col], df["slide"]):
        label = "" if label_of is None else str(label_of[slide])
        if out.setdefault(unit, label) != label and unit_col == "patient":
            raise DatasetError(f"patient {unit!r} has slides with different labels "
                               f"({out[unit]!r}, {label!r}); cannot stratify by patient")
    return out


def fold_slides(df: pd.DataFrame, k: int, labels: Any = None, preserved_site: bool = False,
                site_labels: str = "site", seed: int = 0) -> list[list[str]]:
    """The slides of each of `k` folds."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise DatasetError(f"k must be an integer >= 2, got {k!r}")
    label_of = None
    if isinstance(labels, str):
        if labels not in df.columns:
            raise DatasetError(f"no annotation column {labels!r} to stratify by")
        label_of = dict(zip(df["slide"], df[labels]))
    elif labels is not None:
        label_of = {str(s): str(v) for s, v in dict(labels).items()}
        missing = sorted(set(df["slide"]) - set(label_of))
        if missing:
            raise DatasetError(f"labels has no entry for slides {missing[:5]}")
    unit_col = "patient"
    if preserved_site:
        if site_labels not in df.columns:
            raise DatasetError(f"preserved_site needs a {site_labels!r} annotation column")
        unit_col = site_labels
    units = _units(df, unit_col, None if preserved_site else label_of)
    if len(units) < k:
        raise DatasetError(f"{len(units)} {unit_col}s cannot fill {k} folds")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    per_unit = df.groupby(unit_col)["slide"].apply(list).to_dict()
    for label in sorted(set(units.values())):
        members = sorted(u for u, lab in units.items() if lab == label)
        for u in (members[i] for i in rng.permutation(len(members))):
            target = min(range(k), key=lambda f: (sizes[f], f))
            folds[target].append(u)
            sizes[target] += len(per_unit[u]) if preserved_site else 1
    return [sorted(s for u in f for s in per_unit[u]) for f in folds]


def kfold_split(dataset: Any, k: int, *, labels: Any = None, preserved_site: bool = False,
                site_labels: str = "site", seed: int = 0) -> list[tuple[Any, Any]]:
    """[(train, val)] datasets for each of `k` folds; a patient's slides stay together."""
    folds = fold_slides(dataset.annotations, k, labels, preserved_site, site_labels, seed)
    out = []
    for i, val in enumerate(folds):
        train = sorted(s for j, f in enumerate(folds) if j != i for s in f)
        out.append((dataset.filter({"slide": train}), dataset.filter({"slide": val})))
    return out


__all__ = ["fold_slides", "kfold_split"]
