"""What an extraction run did: per-slide results and the run summary (with its HTML view)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io.runlog import OutcomeCounts
from ...io.tfrecord import get_tfrecord_label
from ..report import summary_table_html


@dataclass
class SlideResult:
    """What happened to one slide: status 'done', 'skipped' (reused) or 'failed'."""

    slide: str
    status: str
    tiles: int = 0
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None
    tfrecord: Path | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # recoveries: stale locks/temps of dead runs
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    preview_png: bytes | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"slide": self.slide, "status": self.status, "tiles": self.tiles,
                "seconds": round(self.seconds, 3), "error": self.error, "reason": self.reason,
                "tfrecord": str(self.tfrecord) if self.tfrecord else None,
                "warnings": list(self.warnings), "notes": list(self.notes)}


@dataclass
class ExtractionSummary(OutcomeCounts):
    """Per-slide results of an extraction run; `summary['slide'].tiles`, `.to_df()`."""

    tile_px: int
    tile_um: Any
    results: dict[str, SlideResult] = field(default_factory=dict)
    seconds: float = 0.0
    reports: list[Path] = field(default_factory=list)
    #: run-level problems (a report that could not be written, e.g. on a full disk)
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return get_tfrecord_label(self.tile_px, self.tile_um)

    def _outcomes(self):
        return self.results.values()

    @property
    def done(self) -> list[str]:
        return self.with_status("done")

    @property
    def skipped(self) -> list[str]:
        return self.with_status("skipped")

    @property
    def failed(self) -> dict[str, str]:
        return self.failures()

    @property
    def busy(self) -> list[str]:
        """Skipped slides that another live process holds (not reused: not done yet)."""
        return [r.slide for r in self.results.values()
                if r.status == "skipped" and (r.reason or "").startswith("busy:")]

    def __getitem__(self, slide: str) -> SlideResult:
        return self.results[slide]

    def __iter__(self):
        return iter(self.results.values())

    def __len__(self) -> int:
        return len(self.results)

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
                f"{len(self.skipped) - busy} reused{held}, {len(self.failed)} failed; "
                f"{self.tiles} tiles in "
                f"{self.seconds:.1f} s, {rate:.0f} tiles/s{errors})")

    def _repr_html_(self) -> str:
        return summary_table_html(self)
