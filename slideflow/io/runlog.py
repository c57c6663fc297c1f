"""What a batch run leaves beside its outputs: `failures.csv` (slide, error type, message) and
`summary.json` (counts, tiles, tiles/s, wall time), both written atomically at the end.

Slides read from URLs add what they cost: `requests` and `bytes_fetched` columns in
failures.csv, and in summary.json the totals plus `fetched` ({slide: {requests, bytes_fetched,
retries}}). Runs over local files keep the three-column failures.csv.

Several runs sharing one output folder (array tasks, concurrent shells) each rewrite them on
exit: the files describe the last run to finish; every run also prints its own summary.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .atomic import atomic_open, write_json_atomic
from .names import csv_safe

FAILURES = "failures.csv"
SUMMARY = "summary.json"


class OutcomeCounts:
    """Slides by status, failure messages and tiles written, for any list of per-slide
    outcomes (objects with `slide`, `status`, `tiles` and `message` or `error`): the one
    counting behind `ExtractionSummary`, `BagsReport` and `run_summary`."""

    def _outcomes(self) -> Iterable[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def with_status(self, status: str) -> list[str]:
        """Slide names with `status`, in run order."""
        return [o.slide for o in self._outcomes() if o.status == status]

    def failures(self) -> dict[str, str]:
        """{slide: 'ErrorType: message'} of the failed slides."""
        return {o.slide: getattr(o, "message", None) or o.error or ""
                for o in self._outcomes() if o.status == "failed"}

    @property
    def tiles(self) -> int:
        """Tiles written in this run (reused slides not counted)."""
        return sum(o.tiles for o in self._outcomes() if o.status == "done")

    @property
    def notes(self) -> list[str]:
        """'slide: what was recovered' (stale locks taken over, dead runs' temps removed)."""
        return [f"{o.slide}: {n}" for o in self._outcomes() for n in getattr(o, "notes", ())]


class _Tally(OutcomeCounts):
    def __init__(self, outcomes: Iterable[Any]):
        self._list = list(outcomes)

    def _outcomes(self) -> Iterable[Any]:
        return self._list


def run_summary(outcomes: Iterable[Any], seconds: float, **extra: Any) -> dict[str, Any]:
    """Counts by status, tiles written, tiles/s, wall time and recoveries (`notes`) of a run's
    slide outcomes (see `OutcomeCounts`)."""
    t = _Tally(outcomes)
    tiles = t.tiles
    counts = {s: len(t.with_status(s)) for s in ("done", "reused", "busy", "failed")}
    fetched = _fetched(t._list)
    remote = {"requests": sum(f["requests"] for f in fetched.values()),
              "bytes_fetched": sum(f["bytes_fetched"] for f in fetched.values()),
              "fetched": fetched} if fetched else {}
    return {
        "slides": len(t._list), **counts, "failed_slides": t.with_status("failed"),
        "tiles": tiles, "seconds": round(seconds, 3),
        "tiles_per_second": round(tiles / seconds, 1) if seconds > 0 else 0.0,
        "notes": t.notes, "host": socket.gethostname(), "pid": os.getpid(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **remote, **extra,
    }


def _fetched(outcomes: Iterable[Any]) -> dict[str, dict[str, int]]:
    """{slide: {requests, bytes_fetched, retries}} of the slides read from URLs."""
    return {o.slide: dict(o.fetched) for o in outcomes if getattr(o, "fetched", None)}


def human_summary(s: dict[str, Any]) -> str:
    """The terminal summary: one line per recovery (stale lock taken over, dead run's
    temporary file removed), one per folder of files a forced run moved aside, then the
    counts (always the last line)."""
    busy = f", {s['busy']} held by other processes" if s.get("busy") else ""
    lines = [f"recovered {n}" for n in s.get("notes") or ()]
    for where, files in (s.get("superseded") or {}).items():
        lines.append(f"moved {len(files)} file(s) the configuration does not describe to "
                     f"{where}")
    if s.get("requests"):
        lines.append(f"fetched {s['bytes_fetched'] / 1e6:,.1f} MB in {s['requests']:,} requests "
                     f"from {len(s['fetched'])} remote slide(s)")
    lines.append(f"{s['done']} done, {s['reused']} reused{busy}, {s['failed']} failed; "
                 f"{s['tiles']:,} tiles in {s['seconds']:.1f} s ({s['tiles_per_second']:,.0f} "
                 "tiles/s)")
    return "\n".join(lines)


def write_run_files(outdir: str | os.PathLike, outcomes: Iterable[Any], summary: dict[str, Any]
                    ) -> tuple[Path, Path]:
    """Write failures.csv (header only when nothing failed) and summary.json."""
    outdir = Path(outdir)
    outcomes = list(outcomes)
    remote = bool(_fetched(outcomes))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "error_type", "message"] + (["requests", "bytes_fetched"] if remote
                                                      else []))
    for o in outcomes:  # names and messages come from data: never a spreadsheet formula
        if o.status == "failed":
            f = getattr(o, "fetched", None) or {}
            w.writerow([csv_safe(o.slide), csv_safe(o.error_type or ""),
                        csv_safe(" ".join(str(o.error or "").split()))] +
                       ([f.get("requests", 0), f.get("bytes_fetched", 0)] if remote else []))
    failures = outdir / FAILURES
    with atomic_open(failures, "w") as fh:
        fh.write(buf.getvalue())
    write_json_atomic(outdir / SUMMARY, summary)
    return failures, outdir / SUMMARY
