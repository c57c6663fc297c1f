"""A slide that fails on a full disk while another slide was being written is tried again,
alone, once the others finish (their temporary files may have taken its room); a slide that
failed alone, or failed for another reason, is not."""

from __future__ import annotations

import threading
from pathlib import Path

import slideflow.engine.extract.scheduler as sched
from slideflow.engine.extract.sidecar import ExtractJob, ExtractOptions
from slideflow.engine.outcome import SlideOutcome, Status
from slideflow.io.atomic import disk_full_text

FULL = disk_full_text(OSError(28, "No space left on device"), "/out")


def _jobs(tmp_path: Path, *names: str) -> list[ExtractJob]:
    return [ExtractJob(n, tmp_path / f"{n}.svs", tmp_path) for n in names]


def _fake(monkeypatch, plan: dict[str, list[str]], together: int = 1):
    """extract_job answering from `plan` ({slide: ['full'|'done'|'bad', ...]} per attempt);
    the first `together` calls wait for each other, so those slides are in flight at once.
    Returns the list of (slide, alone) calls."""
    calls: list[tuple[str, int]] = []
    gate = threading.Barrier(together) if together > 1 else None
    running = [0]
    lock = threading.Lock()

    def fake(job, geometry, opt, **_):
        with lock:
            running[0] += 1
            calls.append((job.name, running[0]))
            first = len(calls) <= together
        if gate is not None and first:
            gate.wait(timeout=10)
        what = plan[job.name].pop(0)
        with lock:
            running[0] -= 1
        r = SlideOutcome(job.name, Status.DONE, tiles=5)
        if what == "full":
            r.fail("OSError", FULL)
        elif what == "bad":
            r.fail("ValueError", "not a slide")
        return r

    monkeypatch.setattr(sched, "extract_job", fake)
    return calls


def _run(tmp_path, names, in_flight):
    return sched.run_jobs(_jobs(tmp_path, *names), 64, 64, ExtractOptions(qc=None, report=False),
                          num_threads=2, slides_in_flight=in_flight, progress=False)


def test_the_slide_that_lost_its_room_is_done_alone(tmp_path, monkeypatch):
    calls = _fake(monkeypatch, {"A": ["full", "full"], "B": ["full", "done"]}, together=2)
    summary = _run(tmp_path, ["A", "B"], 2)
    assert [c[0] for c in calls[2:]] == ["A", "B"] or [c[0] for c in calls[2:]] == ["B", "A"]
    assert all(n == 1 for _, n in calls[2:])  # the retries ran alone
    assert summary["B"].status == Status.DONE and summary.tiles == 5
    assert summary["B"].notes == ["done when tried again alone after a full disk"]
    assert summary.failed == {"A": f"OSError: {FULL}"}
    assert summary["A"].notes == []
    assert list(summary.results) == ["A", "B"]  # run order kept


def test_a_slide_done_beside_it_is_not_tried_again(tmp_path, monkeypatch):
    calls = _fake(monkeypatch, {"A": ["full", "full"], "B": ["done"]}, together=2)
    summary = _run(tmp_path, ["A", "B"], 2)
    assert sorted(c[0] for c in calls) == ["A", "A", "B"]
    assert calls[-1] == ("A", 1)
    assert summary.done == ["B"] and list(summary.failed) == ["A"]


def test_alone_or_other_failures_are_not_tried_again(tmp_path, monkeypatch):
    calls = _fake(monkeypatch, {"A": ["full"], "B": ["done"]})
    summary = _run(tmp_path, ["A", "B"], 1)  # one in flight: nothing else was writing
    assert calls == [("A", 1), ("B", 1)] and list(summary.failed) == ["A"]
    calls = _fake(monkeypatch, {"A": ["bad"], "B": ["done"]}, together=2)
    summary = _run(tmp_path, ["A", "B"], 2)
    assert sorted(c[0] for c in calls) == ["A", "B"]
    assert summary.failed == {"A": "ValueError: not a slide"}


def test_counts_are_checked_by_the_scheduler(tmp_path, monkeypatch):
    """0 slides in flight or 0 threads is an error for every caller, not a silent default."""
    import pytest

    from slideflow.errors import InvalidArgumentError

    calls = _fake(monkeypatch, {"A": ["done"]})
    for kw, name in (({"slides_in_flight": 0}, "slides_in_flight"),
                     ({"num_threads": 0}, "num_threads")):
        with pytest.raises(InvalidArgumentError, match=f"{name} must be an integer >= 1"):
            sched.run_jobs(_jobs(tmp_path, "A"), 64, 64, ExtractOptions(qc=None, report=False),
                           progress=False, **kw)
    assert calls == []
