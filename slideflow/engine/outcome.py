"""What a run did, slide by slide, and the files it leaves: one type for tiles, bags and
slide embeddings.

Every per-slide job of the engine (tile extraction, feature bags, slide embeddings) returns a
`SlideOutcome`; every run returns a `RunReport` over them, and `write_run_files` writes its
`summary.json` and `failures.csv` (format: `slideflow.io.runlog`) for the Python API and the
CLI alike. The status is one of `Status`: a slide held by another live process is `busy`,
never a reason prefix.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import runlog  # runlog.write_run_files looked up per call (tests swap it)
from ..io.runlog import OutcomeCounts

log = logging.getLogger("slideflow")


class Status(str, enum.Enum):
    """A slide's outcome; compares equal to its string ('done', 'reused', 'busy', 'failed')."""

    DONE = "done"  # outputs written by this run
    REUSED = "reused"  # outputs current (same settings and source): kept as they are
    BUSY = "busy"  # another live process holds the slide's lock: skipped, not done yet
    FAILED = "failed"  # this slide's error (error_type, error); the batch went on

    def __str__(self) -> str:
        return self.value


@dataclass
class SlideOutcome:
    """What happened to one slide (see `Status`).

    `reason`: why it was reused, redone or busy; `error_type`/`error` of a failed slide
    (`message` joins them); `notes`: recoveries (stale locks, dead runs' temporary files);
    `fetched`: {requests, bytes_fetched, retries} of a slide read from a URL. Tile extraction
    also fills `tfrecord`, `warnings`, `timings`, `info` and `preview_png` (its HTML report).
    """

    slide: str
    status: str
    tiles: int = 0
    seconds: float = 0.0
    error_type: str | None = None
    error: str | None = None
    reason: str | None = None
    worker: str | None = None
    tfrecord: Path | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fetched: dict[str, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    preview_png: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    def fail(self, error_type: str | None, error: str) -> SlideOutcome:
        """Mark the slide failed with `error_type: error`."""
        self.status, self.error_type, self.error = Status.FAILED, error_type, error
        return self

    @property
    def message(self) -> str | None:
        """'ErrorType: message' of a failed slide."""
        return f"{self.error_type}: {self.error}" if self.error_type else self.error

    def as_dict(self) -> dict[str, Any]:
        return {"slide": self.slide, "status": self.status.value, "tiles": self.tiles,
                "seconds": round(self.seconds, 3), "error": self.message, "reason": self.reason,
                "tfrecord": str(self.tfrecord) if self.tfrecord else None,
                "warnings": list(self.warnings), "notes": list(self.notes)}


class RunReport(OutcomeCounts):
    """A run's outcomes (`outcomes`, run order) and wall time (`seconds`); `write(outdir)`
    leaves its summary.json and failures.csv there. The run's report types (dataclasses) derive
    from it and add what their run also tells."""

    outcomes: list[SlideOutcome]
    seconds: float

    def _outcomes(self) -> list[SlideOutcome]:
        return self.outcomes

    def __iter__(self) -> Iterator[SlideOutcome]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    @property
    def reused(self) -> list[str]:
        """Slides whose outputs were current."""
        return self.with_status(Status.REUSED)

    @property
    def busy(self) -> list[str]:
        """Slides held by another live process: skipped, not done yet."""
        return self.with_status(Status.BUSY)

    @property
    def failed(self) -> dict[str, str]:
        """{slide: 'ErrorType: message'}."""
        return self.failures()

    def summary(self, **extra: Any) -> dict[str, Any]:
        """summary.json's content: counts by status, tiles, tiles/s, notes, + `extra`."""
        return runlog.run_summary(self.outcomes, self.seconds, **extra)

    def write(self, outdir: str | os.PathLike, /, **extra: Any) -> dict[str, Any]:
        """Write summary.json and failures.csv into `outdir`; returns the summary."""
        return write_run_files(outdir, self.outcomes, self.seconds, **extra)


def write_run_files(outdir: str | os.PathLike, outcomes: list[SlideOutcome], seconds: float,
                    /, **extra: Any) -> dict[str, Any]:
    """summary.json + failures.csv of `outcomes` in `outdir` (atomically); returns the summary.
    Raises OSError when they cannot be written (the caller says so)."""
    summary = runlog.run_summary(outcomes, seconds, **extra)
    runlog.write_run_files(outdir, outcomes, summary)
    return summary


def try_write_run_files(outdir: str | os.PathLike, outcomes: list[SlideOutcome],
                        seconds: float, /, **extra: Any) -> str | None:
    """`write_run_files`, returning the error text instead of raising (a full disk must not
    hide the run's results); None when written."""
    try:
        write_run_files(outdir, outcomes, seconds, **extra)
    except OSError as exc:
        why = f"failures.csv and summary.json not written to {outdir} ({exc})"
        log.warning("%s", why)
        return why
    return None
