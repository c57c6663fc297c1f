"""Slide manifests in slide2vec's CSV layout, for the CLI (`--manifest`) and for project
annotations (`sf.create_project(..., annotations='manifest.csv')`).

    sample_id,image_path,mask_path,spacing_at_level_0,patient_id
    slide-1,/data/slide-1.svs,/data/slide-1-mask.png,0.25,patient-A
    slide-2,/data/slide-2.svs,,,patient-A

- `sample_id` (required): names the outputs (`<sample_id>.pt`); the slide name in a project.
- `image_path` (required): the slide file (or DICOM folder). Relative paths are read relative
  to the manifest's folder. A URL (s3://, gs://, https://...) is read from there
  (`slideflow.remote`).
- `mask_path` (optional, may be blank): a binary tissue-mask image of the whole slide, any
  size; used instead of the QC method.
- `spacing_at_level_0` (optional, may be blank): µm/px of level 0, overriding the file's MPP
  (slide2vec's meaning: a declaration about the source image, not the extraction spacing).
- `patient_id` (optional): the patient; defaults to the sample. Required by patient
  embeddings (`sf.embed_patients`, `slideflow encode-patient`), where `sample_id` is optional.

Every reader of a manifest (`slideflow features --manifest`, `encode-patient`,
`sf.embed_patients`) goes through `read_manifest`, so the rules above hold everywhere.

Column semantics follow slide2vec's documentation of its input CSV (checked with the search
tool; no code taken).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SlideflowError
from .location import is_url

REQUIRED = ("sample_id", "image_path")
OPTIONAL = ("mask_path", "spacing_at_level_0", "patient_id")


class ManifestError(SlideflowError, ValueError):
    """A manifest CSV that cannot be used (the message names the file, line and fix)."""


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest."""

    sample_id: str | None  # None only where not required (patient manifests)
    image_path: Path | str  # a str only for a URL
    mask_path: Path | None = None
    mpp: float | None = None
    patient_id: str | None = None


def is_manifest_columns(columns: list[str]) -> bool:
    """True for a header in the manifest layout (sample_id and image_path, no 'slide')."""
    cols = {c.strip() for c in columns}
    return set(REQUIRED) <= cols and "slide" not in cols


def parse_spacing(value: str, where: str) -> float | None:
    """A blank cell -> None; otherwise a finite positive float, or a ManifestError."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        mpp = float(value)
    except ValueError:
        raise ManifestError(f"{where}: spacing_at_level_0 {value!r} is not a number (µm/px, "
                            "e.g. 0.25; leave blank to use the file's)") from None
    if not (math.isfinite(mpp) and mpp > 0):
        raise ManifestError(f"{where}: spacing_at_level_0 must be a positive number of µm/px, "
                            f"got {value!r}")
    return mpp


def read_manifest(source: str | os.PathLike | Any,
                  required: tuple[str, ...] = REQUIRED) -> list[ManifestRow]:
    """Rows of a manifest, validated: required columns, no blank required cell, unique sample
    ids. The one reader behind every command and API that takes a manifest.

    `source` is a CSV path (relative paths in it are relative to the CSV's folder), a pandas
    DataFrame or an iterable of dicts (relative to the working directory). `required` is
    ("sample_id", "image_path") for bags; patient embeddings ask ("patient_id", "image_path")
    and name a slide without a sample_id by its file.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where, base = str(path), path.parent
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = [c.strip() for c in reader.fieldnames or []]
                raw = [{(k or "").strip(): (v or "").strip() for k, v in r.items()}
                       for r in reader]
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read the manifest ({exc})") from None
    else:
        records = source.to_dict("records") if hasattr(source, "to_dict") else list(source)
        raw = [{str(k).strip(): _cell(v) for k, v in dict(r).items()} for r in records]
        header = list(dict.fromkeys(k for r in raw for k in r))
        where, base = "manifest", Path.cwd()
    missing = [c for c in required if c not in header]
    if missing:
        optional = [c for c in (*REQUIRED, *OPTIONAL) if c not in required]
        raise ManifestError(f"{where}: manifest needs the columns {list(required)} (optional: "
                            f"{optional}); missing {missing}, found {header}")
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, r in enumerate(raw, start=2):
        at = f"{where}, line {line}"
        blank = [c for c in required if not r.get(c)]
        if blank:
            raise ManifestError(f"{at}: {' and '.join(blank)} must not be blank")
        sid = r.get("sample_id") or None
        if sid is not None:
            if sid in seen:
                raise ManifestError(f"{at}: sample_id {sid!r} already on line {seen[sid]}; "
                                    "sample ids name the outputs and must be unique")
            seen[sid] = line
        mask = r.get("mask_path") or ""
        rows.append(ManifestRow(sid, _resolve(base, r["image_path"]),
                                _resolve(base, mask) if mask else None,
                                parse_spacing(r.get("spacing_at_level_0", ""), at),
                                r.get("patient_id") or None))
    return rows


def _cell(value: Any) -> str:
    """A DataFrame/dict cell as manifest text (NaN and None are blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _resolve(base: Path, value: str) -> Path | str:
    if is_url(value):
        return value
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p
