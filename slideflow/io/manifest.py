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
- `patient_id` (optional): the patient; defaults to the sample.

Column semantics follow slide2vec's documentation of its input CSV (checked with the search
tool; no code taken).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlideflowError
from .location import is_url

REQUIRED = ("sample_id", "image_path")
OPTIONAL = ("mask_path", "spacing_at_level_0", "patient_id")


class ManifestError(SlideflowError, ValueError):
    """A manifest CSV that cannot be used (the message names the file, line and fix)."""


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest."""

    sample_id: str
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


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a manifest CSV, validated (required columns, unique non-blank sample ids)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip() for c in reader.fieldnames or []]
            raw = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ManifestError(f"{path}: manifest needs the columns {list(REQUIRED)} (optional: "
                            f"{list(OPTIONAL)}); missing {missing}, found {header}")
    base = path.parent
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, r in enumerate(raw, start=2):
        where = f"{path}, line {line}"
        sid, image = r["sample_id"], r["image_path"]
        if not sid or not image:
            raise ManifestError(f"{where}: sample_id and image_path must not be blank")
        if sid in seen:
            raise ManifestError(f"{where}: sample_id {sid!r} already on line {seen[sid]}; "
                                "sample ids name the outputs and must be unique")
        seen[sid] = line
        mask = r.get("mask_path") or ""
        rows.append(ManifestRow(sid, _resolve(base, image), _resolve(base, mask) if mask else None,
                                parse_spacing(r.get("spacing_at_level_0", ""), where),
                                r.get("patient_id") or None))
    return rows


def _resolve(base: Path, value: str) -> Path | str:
    if is_url(value):
        return value
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p
