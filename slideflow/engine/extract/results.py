"""What an extraction run did: per-slide outcomes and the run summary (with its HTML view)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io.tfrecord import get_tfrecord_label
from ..outcome import RunReport, SlideOutcome, Status
from ..report import summary_table_html

#: the per-slide outcome of tile extraction: the engine's one outcome type (its old name)
SlideResult = SlideOutcome


@dataclass
class ExtractionSummary(RunReport):
    """Per-slide results of an extraction run; `summary['slide'].tiles`, `.to_df()`."""

    tile_px: int
    tile_um: Any
    results: dict[str, SlideOutcome] = field(default_factory=dict)
    seconds: float = 0.0
    reports: list[Path] = field(default_factory=list)
    #: run-level problems (a report or summary that could not be written, e.g. on a full disk)
    errors: list[str] = field(default_factory=list)

    @property
    def outcomes(self) -> list[SlideOutcome]:  # type: ignore[override]
        return list(self.results.values())

    @property
    def label(self) -> str:
        return get_tfrecord_label(self.tile_px, self.tile_um)

    @property
    def done(self) -> list[str]:
        return self.with_status(Status.DONE)

    @property
    def skipped(self) -> list[str]:
        """Slides not extracted by this run: reused (current) or busy (another process)."""
        return [o.slide for o in self.outcomes if o.status in (Status.REUSED, Status.BUSY)]

    def __getitem__(self, slide: str) -> SlideOutcome:
        return self.results[slide]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: r.as_dict() for k, r in self.results.items()}

    def to_df(self):
        import pandas as pd

        return pd.DataFrame([r.as_dict() for r in self.results.values()])

    def __repr__(self) -> str:
        rate = self.tiles / self.seconds if self.seconds else 0.0
        busy = len(self.busy)
        held = f", {busy} held by other processes" if busy else ""
        errors = f"; {len(self.errors)} run errors" if self.errors else ""
        return (f"ExtractionSummary({self.label}: {len(self.done)} extracted, "
                f"{len(self.reused)} reused{held}, {len(self.failed)} failed; "
                f"{self.tiles} tiles in "
                f"{self.seconds:.1f} s, {rate:.0f} tiles/s{errors})")

    def _repr_html_(self) -> str:
        return summary_table_html(self)
