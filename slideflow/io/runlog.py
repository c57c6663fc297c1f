"""What a batch run leaves beside its outputs: `failures.csv` (slide, error type, message) and
`summary.json` (counts, tiles, tiles/s, wall time), both written atomically at the end.

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

FAILURES = "failures.csv"
SUMMARY = "summary.json"


def run_summary(outcomes: Iterable[Any], seconds: float, **extra: Any) -> dict[str, Any]:
    """Counts by status, tiles written, tiles/s and wall time of a run's slide outcomes
    (objects with `slide`, `status`, `tiles`, `error_type`, `error`)."""
    outcomes = list(outcomes)
    by = {s: [o for o in outcomes if o.status == s] for s in ("done", "reused", "busy", "failed")}
    tiles = sum(o.tiles for o in by["done"])
    return {
        "slides": len(outcomes), "done": len(by["done"]), "reused": len(by["reused"]),
        "busy": len(by["busy"]), "failed": len(by["failed"]),
        "failed_slides": [o.slide for o in by["failed"]],
        "tiles": tiles, "seconds": round(seconds, 3),
        "tiles_per_second": round(tiles / seconds, 1) if seconds > 0 else 0.0,
        "host": socket.gethostname(), "pid": os.getpid(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra,
    }


def human_summary(s: dict[str, Any]) -> str:
    """One line for the terminal."""
    busy = f", {s['busy']} held by other processes" if s.get("busy") else ""
    return (f"{s['done']} done, {s['reused']} reused{busy}, {s['failed']} failed; "
            f"{s['tiles']:,} tiles in {s['seconds']:.1f} s ({s['tiles_per_second']:,.0f} "
            "tiles/s)")


def write_run_files(outdir: str | os.PathLike, outcomes: Iterable[Any], summary: dict[str, Any]
                    ) -> tuple[Path, Path]:
    """Write failures.csv (header only when nothing failed) and summary.json."""
    outdir = Path(outdir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "error_type", "message"])
    for o in outcomes:
        if o.status == "failed":
            w.writerow([o.slide, o.error_type or "", " ".join(str(o.error or "").split())])
    failures = outdir / FAILURES
    with atomic_open(failures, "w") as fh:
        fh.write(buf.getvalue())
    write_json_atomic(outdir / SUMMARY, summary)
    return failures, outdir / SUMMARY
