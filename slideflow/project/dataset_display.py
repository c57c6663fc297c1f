"""How a Dataset shows itself: a per-slide summary table, a one-line repr and an HTML table
for notebooks. A mixin, so that `Dataset` itself holds only selection and work."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from ..remote.url import safe_url
from .annotations import PATIENT, SLIDE
from .dataset_index import tile_counts


class DatasetDisplay:
    """`summary()`, `repr()` and `_repr_html_()` of a Dataset (uses its selection methods)."""

    _files: Any
    _sources: dict[str, Any]
    label: str | None
    tile_px: int | None
    tile_um: Any
    filters: dict[str, list[str]]
    filter_blank: list[str]
    min_tiles: int

    def summary(self) -> pd.DataFrame:
        """One row per annotated slide passing the column filters: where it is, its tile count
        and whether it is in the dataset."""
        files = self._files.slides()
        tfrs = self._files.tfrecords(self.label) if self.label else {}
        present = self._present()  # type: ignore[attr-defined]
        counts = tile_counts({n: v[1] for n, v in tfrs.items()}) if tfrs else {}
        rows = []
        for _, row in self._candidates().iterrows():  # type: ignore[attr-defined]
            name = row[SLIDE]
            src = files.get(name, tfrs.get(name, (None, None)))[0]
            roi = src.roi_file(name) if src is not None else None
            rows.append({
                "slide": name, "patient": row[PATIENT],
                "source": src.name if src is not None else None,
                "slide_file": safe_url(str(files[name][1])) if name in files else None,
                "roi": str(roi) if roi else None,
                "tiles": counts.get(name), "in_dataset": name in present,
            })
        return pd.DataFrame(rows, columns=["slide", "patient", "source", "slide_file", "roi",
                                           "tiles", "in_dataset"])

    def _counts(self) -> dict[str, int]:
        present = self._present()  # type: ignore[attr-defined]
        patients = self.patients()  # type: ignore[attr-defined]
        return {
            "slides": len(present),
            "patients": len({p for s, p in patients.items() if s in present}),
            "slide_files": sum(v.slide is not None for v in present.values()),
            "tfrecords": sum(v.tfrecord is not None for v in present.values())
            if self.label else 0,
            "missing": len(self.missing_slides()),  # type: ignore[attr-defined]
        }

    def __repr__(self) -> str:
        c = self._counts()
        geo = f"tile_px={self.tile_px}, tile_um={self.tile_um!r}, " if self.label else ""
        extra = []
        if self.filters:
            extra.append(f"filters={self.filters}")
        if self.filter_blank:
            extra.append(f"filter_blank={self.filter_blank}")
        if self.min_tiles:
            extra.append(f"min_tiles={self.min_tiles}")
        return (f"Dataset({geo}sources={list(self._sources)}, slides={c['slides']}, "
                f"patients={c['patients']}, with_slide_file={c['slide_files']}, "
                f"tfrecords={c['tfrecords']}, missing={c['missing']}"
                f"{', ' if extra else ''}{', '.join(extra)})")

    def _repr_html_(self) -> str:
        c = self._counts()
        rows = [("geometry", f"{self.tile_px} px / {self.tile_um}" if self.label else "none"),
                ("sources", ", ".join(self._sources)), ("slides", c["slides"]),
                ("patients", c["patients"]), ("with slide file", c["slide_files"]),
                ("TFRecords", c["tfrecords"]), ("annotated but missing", c["missing"])]
        if self.filters or self.filter_blank or self.min_tiles:
            rows.append(("filters", f"{self.filters} blank={self.filter_blank} "
                                    f"min_tiles={self.min_tiles}"))
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<b>slideflow Dataset</b><table>{body}</table>"
