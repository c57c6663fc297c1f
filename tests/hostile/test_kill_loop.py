"""kill -9 at seeded random points of `extract-tiles` (TFRecords) and `features` (bags), twice in a
row, then a rerun: the rerun finishes, its outputs are byte-identical to an uninterrupted run,
and no temporary file, lock or half-finished output is left. Between kills, every output that
looks finished must already be byte-identical to the uninterrupted run's.

Kept small (3 copies of a small slide, 64-px tiles, a 4-feature extractor) and seeded: about
half a minute of work on 2 cores, most of it starting the killed processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import slideflow as sf
from slideflow.cli import app
from slideflow.io.atomic import TMP_MARK

from .cases import hostile
from .tiny import NAME, plugin_files, tiny_extractor
from conftest import CMU

SLIDES = ("kill-a", "kill-b", "kill-c")
GEOMETRY = ["--tile-px", "64", "--tile-um", "48", "--qc", "none"]  # 690 tiles per slide
ROUNDS, KILLS = 2, 2
#: not outputs: per-run files and the HTML report (it holds timings)
RUN_FILES = {"summary.json", "failures.csv", "extraction_report.html"}

#: a CLI process that imports first, then waits for its arguments (one JSON line) and runs
WORKER = r"""
import json, sys
if sys.argv[1] != "0":
    import torch
    torch.set_num_threads(int(sys.argv[1]))
from slideflow.cli import main
import slideflow.extract, slideflow.dataset_work
print("ready", flush=True)
sys.argv = ["slideflow", *json.loads(sys.stdin.readline())]
main()
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory, slides) -> Path:
    folder = tmp_path_factory.mktemp("kill_slides")
    for n in SLIDES:
        (folder / f"{n}.svs").symlink_to(CMU)
    return folder


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in RUN_FILES}


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if TMP_MARK in p.name or ".lock" in p.name)


POLL = 0.005  # s between looks at the output folder


class _Progress:
    """Finished outputs in a folder (final names with `suffix`; temporary names excluded)."""

    def __init__(self, folder: Path, suffix: str):
        self.folder, self.suffix = folder, suffix

    def count(self) -> int:
        if not self.folder.exists():
            return 0
        return sum(TMP_MARK not in p.name for p in self.folder.rglob(f"*{self.suffix}"))


class _Workers:
    """Started one ahead, so that the next process imports while this one works."""

    def __init__(self, folder: Path, torch_threads: int):
        self.script = folder / "worker.py"
        self.script.write_text(WORKER)
        self.threads = torch_threads
        self.next = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(self.script), str(self.threads)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=_env(), text=True)

    def _start(self, args: list[str]) -> subprocess.Popen:
        p, self.next = self.next, None
        assert p.stdout.readline().strip() == "ready"
        p.stdin.write(json.dumps(args) + "\n")
        p.stdin.flush()
        self.next = self._spawn()
        return p

    def run(self, args: list[str], progress: _Progress) -> list[float]:
        """Run the CLI with `args` to the end; returns when each output appeared (s)."""
        p = self._start(args)
        t0, seen, times = time.perf_counter(), progress.count(), []
        while p.poll() is None:
            now = progress.count()
            times += [time.perf_counter() - t0] * (now - seen)
            seen = now
            time.sleep(POLL)
        p.communicate(timeout=600)
        assert p.returncode == 0
        times += [time.perf_counter() - t0] * (progress.count() - seen)
        return times

    def kill_at(self, args: list[str], progress: _Progress, after: int, delay: float) -> bool:
        """Run the CLI with `args`; kill -9 it `delay` s after `after` more outputs appeared
        (progress, not wall time: a faster or slower machine still lands the kill inside the
        work). True when it was killed before it ended."""
        p = self._start(args)
        target = progress.count() + after
        while p.poll() is None and progress.count() < target:
            time.sleep(POLL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.communicate()
        return p.returncode == -signal.SIGKILL

    def close(self) -> None:
        if self.next is not None:
            self.next.kill()
            self.next.communicate()


def _nothing_false_finished(out: Path, ref: dict[str, bytes]) -> None:
    """Every output in place that looks finished equals the uninterrupted run's bytes."""
    for rel, data in _outputs(out).items():
        if TMP_MARK in rel or ".lock" in rel:
            continue  # a temporary name or the dead process's lock: never taken for output
        if rel.endswith(".extract.json") and not json.loads(data).get("complete"):
            continue  # the sidecar says: not finished
        assert rel in ref and data == ref[rel], f"{rel} looks finished but differs"


def _loop(workers: _Workers, rerun, args_for, out_of,
          suffix: str) -> tuple[dict[str, bytes], int]:
    """The uninterrupted run (its bytes: the reference), then the kill rounds; returns the
    reference and how many kills left the work unfinished (the others came after the end).

    Each kill waits for a seeded random number of new outputs (fewer than remain), then a
    seeded random delay shorter than the reference run's time per output: before the first
    output, within a write, or between two."""
    ref_root = workers.script.parent / "ref"
    times = workers.run(args_for(ref_root), _Progress(out_of(ref_root), suffix))
    assert len(times) == 3, times  # one output per slide, each seen appearing
    ref = _outputs(out_of(ref_root))
    per_output = (times[-1] - times[0]) / max(len(times) - 1, 1)
    rng = random.Random(11)
    interrupted = 0
    try:
        for r in range(ROUNDS):
            root = workers.script.parent / f"round{r}"
            args = args_for(root)
            progress = _Progress(out_of(root), suffix)
            for _ in range(KILLS):  # the second kill lands on the first one's leftovers
                todo = len(times) - progress.count()
                after = rng.randrange(todo) if todo > 0 else 0
                delay = rng.uniform(0.05, times[0]) if after == 0 else \
                    rng.uniform(0.0, 0.5 * per_output)
                workers.kill_at(args, progress, after, delay)
                out = out_of(root)
                if out.exists():
                    _nothing_false_finished(out, ref)
                    interrupted += _outputs(out) != ref or bool(_leftovers(out))
                else:
                    interrupted += 1
            res = rerun(args)
            assert res.exit_code == 0, res.output
            assert _outputs(out_of(root)) == ref
            assert _leftovers(out_of(root)) == []
    finally:
        workers.close()
    return ref, interrupted


@hostile("kill-9-loop-extract", "kill -9 at seeded random points of extract-tiles (3 slides, "
         "2 in flight), twice before each rerun, 2 rounds",
         "between kills every finished-looking TFRecord/index/sidecar equals the uninterrupted "
         "run; the rerun exits 0, byte-identical, no .tmp-*, no lock")
def test_kill_loop_extract_tiles(tmp_path, slide_dir):
    runner = CliRunner()

    def project(root: Path) -> list[str]:
        if not root.exists():
            sf.create_project(root, slides=slide_dir)
        return ["extract-tiles", str(root), *GEOMETRY]

    def out_of(root: Path) -> Path:
        return root / "tfrecords"

    ref, interrupted = _loop(_Workers(tmp_path, 0), lambda a: runner.invoke(app, a),
                             project, out_of, ".tfrecords")
    assert len([k for k in ref if k.endswith(".tfrecords")]) == 3
    assert interrupted >= ROUNDS, interrupted  # kills landed while slides were being written


@hostile("kill-9-loop-features", "kill -9 at seeded random points of `features` (3 slides, "
         "tiny extractor), twice before each rerun, 2 rounds",
         "between kills every finished-looking bag/index/config equals the uninterrupted run; "
         "the rerun (taking over the dead locks) exits 0, byte-identical, no .tmp-*, no lock")
def test_kill_loop_features(tmp_path, slide_dir):
    tiny_extractor(tmp_path / "tiny")
    plugin, ckpt = plugin_files(tmp_path / "tiny")
    runner = CliRunner()
    common = ["-e", NAME, "--weights", str(ckpt), *GEOMETRY, "--batch-size", "64"]

    def args_for(root: Path) -> list[str]:
        return ["features", str(slide_dir), "-o", str(root / "bags"), *common,
                "--feature-plugin", str(plugin)]

    def rerun(args: list[str]):
        return runner.invoke(app, args[:-2])  # registered in this process already

    ref, interrupted = _loop(_Workers(tmp_path, torch.get_num_threads()), rerun, args_for,
                             lambda root: root / "bags", ".pt")
    assert sorted(ref) == sorted(["bags_config.json"] + [f"{n}{s}" for n in SLIDES
                                                         for s in (".pt", ".index.npz")])
    assert interrupted >= ROUNDS, interrupted
