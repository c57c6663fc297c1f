"""Progress display for slide batches: a rich bar with slides done and tiles/s on a terminal,
one log line per slide otherwise (batch jobs, CI, notebooks without a TTY stay quiet).

    with track_slides(len(jobs), "extract") as bar:
        bar.advance_tiles(64)              # from any thread
        bar.slide_done("slide-1", 391)
        bar.slide_failed("slide-2", "no MPP")

Every method is thread-safe.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("slideflow")


def failure_kind(message: str) -> str:
    """'MissingMPPError' of 'MissingMPPError: the file records no MPP' (else 'see summary')."""
    head = (message or "").split(":", 1)[0].strip()
    return head if head.isidentifier() else "reason in the summary"


def is_interactive(stream: Any = None) -> bool:
    """True when `stream` (default stderr) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class SlideProgress:
    """Counts slides and tiles; draws a rich progress bar when `live`."""

    def __init__(self, total_slides: int, desc: str = "slides", *, live: bool = False):
        self.total = int(total_slides)
        self.desc = desc
        self.live = live
        self.slides_done = 0
        self.slides_failed = 0
        self.slides_skipped = 0
        self.tiles = 0
        self.requests = 0  # of slides read from URLs
        self.bytes_fetched = 0
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._progress: Any = None
        self._slides_task: Any = None
        self._tiles_task: Any = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> SlideProgress:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.start()
            self._slides_task = self._progress.add_task(self.desc, total=self.total,
                                                        status=self._status())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = None

    # -- events ---------------------------------------------------------------------------------
    def advance_tiles(self, n: int) -> None:
        with self._lock:
            self.tiles += int(n)
        self._refresh()

    def slide_done(self, name: str, tiles: int = 0, fetched: dict | None = None) -> None:
        """A slide finished (`tiles` is informational: tiles are counted by advance_tiles);
        `fetched`: {requests, bytes_fetched} of a slide read from a URL."""
        with self._lock:
            self.slides_done += 1
        if not self.live:
            cost = (f", {fetched['bytes_fetched'] / 1e6:.1f} MB in {fetched['requests']} "
                    "requests") if fetched else ""
            log.info("%s: %s done (%d tiles%s) [%d/%d]", self.desc, name, tiles, cost,
                     self.finished, self.total)
        self._advance()

    def add_fetched(self, fetched: dict | None) -> None:
        """Count a remote slide's requests and bytes (shown in the status line)."""
        if fetched:
            with self._lock:
                self.requests += int(fetched.get("requests", 0))
                self.bytes_fetched += int(fetched.get("bytes_fetched", 0))

    def slide_skipped(self, name: str, why: str = "already done") -> None:
        with self._lock:
            self.slides_skipped += 1
        if not self.live:
            log.info("%s: %s skipped (%s) [%d/%d]", self.desc, name, why, self.finished,
                     self.total)
        self._advance()

    def slide_failed(self, name: str, message: str) -> None:
        """A slide failed: one progress line naming the error type. The reason itself is
        printed once, by the caller's summary (the CLI's FAILED lines, `report.failed`)."""
        with self._lock:
            self.slides_failed += 1
        kind = failure_kind(message)
        if self.live and self._progress is not None:
            from rich.markup import escape

            self._progress.console.print(f"[red]{escape(name)} failed ({escape(kind)})")
        else:
            log.info("%s: %s failed (%s) [%d/%d]", self.desc, name, kind, self.finished,
                     self.total)
        self._advance()

    # -- numbers --------------------------------------------------------------------------------
    @property
    def finished(self) -> int:
        return self.slides_done + self.slides_failed + self.slides_skipped

    @property
    def tiles_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.tiles / elapsed if elapsed > 0 else 0.0

    def _status(self) -> str:
        parts = [f"{self.tiles:,} tiles", f"{self.tiles_per_second:,.0f} tiles/s"]
        if self.requests:
            parts.append(f"{self.bytes_fetched / 1e6:,.1f} MB fetched")
        if self.slides_skipped:
            parts.append(f"{self.slides_skipped} reused")
        if self.slides_failed:
            parts.append(f"[red]{self.slides_failed} failed[/red]")
        return " · ".join(parts)

    def _advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._slides_task, completed=self.finished,
                                  status=self._status())

    def _refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(self._slides_task, status=self._status())


@contextmanager
def track_slides(total: int, desc: str = "slides", enabled: bool | None = True
                 ) -> Iterator[SlideProgress]:
    """A `SlideProgress`; the bar is drawn only when `enabled` and stderr is a terminal."""
    live = bool(enabled) and is_interactive()
    with SlideProgress(total, desc, live=live) as bar:
        yield bar
