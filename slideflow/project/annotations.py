"""Project annotations: one CSV row per slide, with `patient`, `slide` and label columns.

Everything is read as text (no type guessing: '007' stays '007', 'NA' stays 'NA'); blank cells
are empty strings. Labels become numbers only when asked (`Dataset.labels(use_float=True)`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DatasetError, ProjectError
from ..io.atomic import atomic_open
from ..io.manifest import is_manifest_columns
from ..io.names import csv_safe, csv_unsafe

log = logging.getLogger("slideflow")

PATIENT = "patient"
SLIDE = "slide"
#: column names people often use for the slide column
_SLIDE_LOOKALIKES = ("slide_id", "slide_name", "slidename", "slides", "filename", "file",
                     "image", "wsi", "case_id")


def read_annotations(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate an annotations CSV (see `validate_annotations`)."""
    path = Path(path)
    if not path.is_file():
        raise ProjectError(f"{path}: annotations file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                         skipinitialspace=True, encoding="utf-8-sig")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ProjectError(f"{path}: cannot read the annotations CSV ({exc})") from None
    return validate_annotations(df.map(csv_unsafe), path)  # cells we escaped on writing


def validate_annotations(df: pd.DataFrame, origin: str | os.PathLike = "annotations"
                         ) -> pd.DataFrame:
    """Clean and check annotations; returns a new DataFrame of strings.

    - column names and cells are stripped of surrounding spaces;
    - a `slide` column is required (the error names look-alike columns to rename);
    - slide names must be unique and not blank (errors list the offending rows);
    - a missing `patient` column is filled with the slide names (one patient per slide).
    """
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    df = df.fillna("").astype(str)
    for col in df.columns:
        df[col] = df[col].str.strip()
    df = _from_manifest(df, origin)
    if SLIDE not in df.columns:
        lookalike = [c for c in df.columns if c.lower() in (SLIDE, *_SLIDE_LOOKALIKES)]
        hint = (f"rename column {lookalike[0]!r} to 'slide'" if lookalike else
                "add a 'slide' column holding each slide's file name without its extension "
                "(e.g. 'TCGA-AA-1234-01Z' for TCGA-AA-1234-01Z.svs)")
        raise ProjectError(f"{origin}: no 'slide' column (columns: {', '.join(df.columns)}); "
                           f"{hint}")
    # CSV line numbers (header is line 1) to make the errors easy to act on
    lines = pd.Series(range(2, len(df) + 2), index=df.index)
    blank = df[SLIDE] == ""
    if blank.any():
        raise ProjectError(f"{origin}: blank 'slide' value on line(s) "
                           f"{_short(lines[blank].astype(str))}; fill them in or delete the rows")
    dup = df[SLIDE].duplicated(keep=False)
    if dup.any():
        groups = [f"{name!r} (lines {', '.join(map(str, lines[df[SLIDE] == name]))})"
                  for name in dict.fromkeys(df.loc[dup, SLIDE])]
        raise ProjectError(f"{origin}: each slide may appear only once; duplicated: "
                           f"{_short(groups)}. Merge or delete the extra rows")
    if PATIENT not in df.columns:
        log.info("%s: no 'patient' column; using one patient per slide", origin)
        df.insert(0, PATIENT, df[SLIDE])
    else:
        missing = df[PATIENT] == ""
        if missing.any():
            log.warning("%s: %d row(s) with a blank patient; using the slide name", origin,
                        int(missing.sum()))
            df.loc[missing, PATIENT] = df.loc[missing, SLIDE]
    return df.reset_index(drop=True)


def _from_manifest(df: pd.DataFrame, origin: str | os.PathLike) -> pd.DataFrame:
    """A slide2vec-style manifest (`sample_id,image_path[,mask_path][,spacing_at_level_0]
    [,patient_id]`, see `slideflow.io.manifest`) read as annotations: `sample_id` is the slide
    name, `patient_id` the patient and `spacing_at_level_0` the `mpp` column; `image_path` and
    `mask_path` are made absolute (relative to the manifest); the mask replaces the QC method
    for that slide in extraction and bags (`Dataset.annotation_masks`)."""
    if not is_manifest_columns(list(df.columns)):
        return df
    renames = {"sample_id": SLIDE}
    if "patient_id" in df.columns and PATIENT not in df.columns:
        renames["patient_id"] = PATIENT
    if "spacing_at_level_0" in df.columns and "mpp" not in df.columns:
        renames["spacing_at_level_0"] = "mpp"
    log.info("%s: manifest columns read as annotations (%s)", origin,
             ", ".join(f"{a} -> {b}" for a, b in renames.items()))
    if Path(origin).is_file():  # relative paths are relative to the manifest, as everywhere
        base = Path(origin).resolve().parent
        for col in ("image_path", "mask_path"):
            if col in df.columns:
                df[col] = [str(base / v) if v and not Path(v).expanduser().is_absolute()
                           else v for v in df[col]]
    return df.rename(columns=renames)


def annotations_copy(path: str | os.PathLike) -> bytes:
    """The bytes a project keeps of an annotations CSV: the file itself, except that a
    manifest's relative `image_path` / `mask_path` are made absolute (they are relative to the
    manifest's folder, which the project's copy does not share)."""
    path = Path(path)
    data = path.read_bytes()
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                     skipinitialspace=True, encoding="utf-8-sig")
    df.columns = [str(c).strip() for c in df.columns]
    if not is_manifest_columns(list(df.columns)):
        return data
    base = path.resolve().parent
    changed = False
    for col in ("image_path", "mask_path"):
        if col in df.columns:
            new = [str(base / v.strip()) if v.strip() and not
                   Path(v.strip()).expanduser().is_absolute() else v for v in df[col]]
            changed |= new != list(df[col])
            df[col] = new
    return df.to_csv(index=False, lineterminator="\n").encode() if changed else data


def blank_annotations(slides: Iterable[str]) -> pd.DataFrame:
    """Annotations listing `slides`, one patient per slide (patient = slide name)."""
    names = sorted(dict.fromkeys(slides))
    return pd.DataFrame({PATIENT: names, SLIDE: names}, dtype=str)


def write_annotations(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write annotations atomically (no index column); returns the path."""
    path = Path(path)
    with atomic_open(path, "w") as fh:  # cells a spreadsheet would execute are escaped
        df.map(csv_safe).to_csv(fh, index=False, lineterminator="\n")
    return path


def _short(items: Iterable[str], limit: int = 10) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def column_labels(df: pd.DataFrame, column: str, use_float: bool = False,
                  format: str = "index") -> tuple[dict[str, Any], list[Any]]:
    """({slide: label}, unique labels) of one annotation column (`Dataset.labels`).

    Categorical (default): unique labels are the sorted distinct strings and each slide maps
    to the index of its label in that list (`format='name'` maps to the string instead).
    `use_float=True`: slides map to floats and the unique labels are the sorted floats.
    Blank labels are an error: exclude them with `filter(filter_blank=[column])`.
    """
    if column not in df.columns:
        raise DatasetError(f"no annotation column {column!r} (columns: "
                           f"{', '.join(df.columns)})")
    values = dict(zip(df[SLIDE], df[column]))
    blank = sorted(k for k, v in values.items() if v == "")
    if blank:
        raise DatasetError(f"{len(blank)} slide(s) have a blank {column!r}: "
                           f"{', '.join(blank[:10])}; use filter_blank=[{column!r}]")
    if use_float:
        try:
            floats = {k: float(v) for k, v in values.items()}
        except ValueError:
            bad = sorted({v for v in values.values() if not _is_float(v)})
            raise DatasetError(f"column {column!r} is not numeric (values like "
                               f"{bad[:5]}); use use_float=False") from None
        odd = sorted(k for k, v in floats.items() if not math.isfinite(v))
        if odd:  # 'nan'/'inf' parse as floats but are no label a model can learn
            raise DatasetError(f"column {column!r}: {len(odd)} slide(s) have a non-finite "
                               f"label ({', '.join(f'{k}={values[k]!r}' for k in odd[:10])});"
                               " fix or blank them and use filter_blank=[column]")
        return floats, sorted(set(floats.values()))
    unique = sorted(set(values.values()))
    if format == "name":
        return values, unique
    if format != "index":
        raise ValueError(f"format must be 'index' or 'name', got {format!r}")
    pos = {u: i for i, u in enumerate(unique)}
    return {k: pos[v] for k, v in values.items()}, unique


def _is_float(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False
