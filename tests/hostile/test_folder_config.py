"""A bag folder holds one configuration: claimed at the start of a run, re-checked before each
commit; `--force` moves what the new configuration does not describe to `.superseded-<time>/`
(never deleting it) and says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slideflow.errors import BagsConfigMismatchError
from slideflow.features import SlideJob, bags_config, generate_bags
from slideflow.io.bags import read_bag_meta
from slideflow.io.claim import SUPERSEDED_PREFIX, claim_config
from slideflow.selection import TileSelection

from .cases import hostile
from .tiny import NAME, plugin_args, tiny_extractor
from conftest import CMU, TCGA_J2K

A, B = "slide-a", "slide-b"  # two copies of CMU-1-Small-Region (24 tiles each)
GEOMETRY = ["--tile-px", "112", "--qc", "none"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _two_slides(folder: Path, link: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name in (A, B):
        (folder / f"{name}.svs").symlink_to(CMU) if link else shutil.copy(
            CMU, folder / f"{name}.svs")
    return folder


def _requests(out: Path) -> dict[str, float]:
    """slide -> tile_um recorded in each finished bag."""
    return {p.stem: read_bag_meta(out, p.stem)["request"]["config"]["tile_um"]
            for p in sorted(out.glob("*.pt"))}


@hostile("concurrent-runs-other-settings", "three CLI runs started at once into one folder: "
         "two shards (--shard 0/2, 1/2) with tile_um 224 and one run with tile_um 112",
         "the first claim of bags_config.json wins; runs with the same settings cooperate "
         "(exit 0, every slide once); the other exits 2 with an error naming the folder and "
         "'tile_um: 112.0 here, 224.0 in the folder'; every bag matches the config")
def test_concurrent_runs_with_other_settings(tmp_path, slides):
    out = tmp_path / "bags"
    tiny = plugin_args(tmp_path / "tiny")
    cli = [sys.executable, "-m", "slideflow", "features", str(_two_slides(tmp_path / "s")),
           "-o", str(out), *tiny, *GEOMETRY]
    runs = {"s0": [*cli, "--tile-um", "224", "--shard", "0/2"],
            "s1": [*cli, "--tile-um", "224", "--shard", "1/2"],
            "other": [*cli, "--tile-um", "112"]}
    procs = {k: subprocess.Popen(v, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, v in runs.items()}
    res = {k: (p.wait(timeout=600), *p.communicate()) for k, p in procs.items()}
    um = json.loads((out / "bags_config.json").read_text())["tile_um"]
    winners = {"s0", "s1"} if um == 224 else {"other"}
    for k, (rc, _, err) in res.items():
        if k in winners:
            assert rc == 0, (k, err)
        else:
            assert rc == 2, (k, err)
            assert str(out) in err and "tile_um: " in err and "in the folder" in err, err
    assert set(_requests(out).values()) == {um}  # nothing the config does not describe
    assert sorted(_requests(out)) == sorted([A, B])  # shards or the single run: every slide
    assert not list(out.glob("*.lock")) and not list(out.glob("*.tmp-*"))


@hostile("config-changed-mid-run", "another run claims the folder with other settings "
         "(--force) while this run is computing a bag",
         "this run's re-check before the commit raises BagsConfigMismatchError ('claimed by "
         "another run ... while this run was writing'); its bag is never moved into place")
def test_config_rechecked_before_each_commit(tmp_path, slides):
    ext = tiny_extractor(tmp_path / "tiny")
    other = tiny_extractor(tmp_path / "tiny")
    out = tmp_path / "bags"
    cfg_b = bags_config(other, None, 112, 112, TileSelection(), "pt")
    fired = []

    def intruder(*_):
        if not fired:
            fired.append(claim_config(out / "bags_config.json", cfg_b, force=True))

    ext.model.register_forward_hook(intruder)
    with pytest.raises(BagsConfigMismatchError, match="while this run was writing") as exc:
        generate_bags([SlideJob(A, CMU)], ext, out, 112, 224, progress=False)
    assert str(out) in str(exc.value) and "tile_um: 224" in str(exc.value)
    assert fired and not list(out.glob("*.pt")) and not list(out.glob("*.tmp-*"))
    assert json.loads((out / "bags_config.json").read_text())["tile_um"] == 112
    moved = list(fired[0].superseded.iterdir())  # our claim, moved aside, not deleted
    assert [p.name for p in moved] == ["bags_config.json"]


@hostile("force-with-failing-slide", "--force with new settings into a folder of old bags, "
         "one slide now failing (its file replaced by a truncated copy)",
         "old config and every bag it no longer describes (the failing slide's too) moved to "
         "<out>/.superseded-<UTC>/ byte for byte; summary line and summary.json say so; the "
         "folder holds only what the new config describes")
def test_force_moves_stale_bags_aside(tmp_path, slides):
    tiny_extractor(tmp_path / "tiny")  # registered in this process for the in-process CLI
    from slideflow.cli import app

    src = _two_slides(tmp_path / "slides", link=False)
    out = tmp_path / "bags"
    args = ["features", str(src), "-o", str(out), "-e", NAME, "--weights",
            str(tmp_path / "tiny" / "hostile_tiny.pth"), *GEOMETRY]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--tile-um", "224"])
    assert first.exit_code == 0, first.output
    old = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()
           and p.name not in ("summary.json", "failures.csv")}
    assert sorted(old) == sorted([f"{A}.pt", f"{A}.index.npz", f"{B}.pt", f"{B}.index.npz",
                                  "bags_config.json"])
    (src / f"{B}.svs").write_bytes(CMU.read_bytes()[:5000])  # now fails
    res = runner.invoke(app, [*args, "--tile-um", "112", "--force"])
    assert res.exit_code == 1, res.output
    aside = [p for p in out.iterdir() if p.name.startswith(SUPERSEDED_PREFIX)]
    assert len(aside) == 1
    assert {p.name: p.read_bytes() for p in aside[0].iterdir()} == old  # nothing lost
    assert f"moved 5 file(s) the configuration does not describe to {aside[0]}" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["superseded"][str(aside[0])]) == sorted(old)
    assert _requests(out) == {A: 112.0}  # the failing slide's old bag is not beside the config
    assert json.loads((out / "bags_config.json").read_text())["tile_um"] == 112.0
    again = runner.invoke(app, [*args, "--tile-um", "112", "--force"])  # same settings: keep
    assert "moved" not in again.output and _requests(out) == {A: 112.0}
    assert len([p for p in out.iterdir() if p.name.startswith(SUPERSEDED_PREFIX)]) == 1


@hostile("other-settings-without-force", "a second run with another tile size into a "
         "finished folder, no --force",
         "exit 2 before any slide is read: 'error: <folder>: ... tile_px: 224 here, 112 in "
         "the folder'; the folder is untouched")
def test_other_settings_without_force_is_refused(tmp_path, slides):
    ext = tiny_extractor(tmp_path / "tiny")
    out = tmp_path / "bags"
    generate_bags([SlideJob(A, CMU)], ext, out, 112, 224, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BagsConfigMismatchError, match=r"tile_px: 224 here, 112 in the folder"):
        generate_bags([SlideJob(A, CMU)], ext, out, 224, 224, progress=False)
    with pytest.raises(BagsConfigMismatchError, match=r"provenance.format: 'h5' here"):
        generate_bags([SlideJob(A, CMU)], ext, out, 112, 224, fmt="h5", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@hostile("cli-exit-status", "`python -m slideflow features` with a slide that fails (no "
         "MPP), and with settings the folder refuses",
         "exit 1 and exit 2 from the real entry point (both exited 0: main() dropped the "
         "command's exit code)")
def test_entry_point_passes_the_exit_status_on(tmp_path, slides):
    out = tmp_path / "bags"
    cli = [sys.executable, "-m", "slideflow", "features", "-o", str(out),
           *plugin_args(tmp_path / "tiny"), *GEOMETRY, "--tile-um", "224"]
    # a slide that fails (no MPP); a path that does not exist is a usage error (exit 2, before
    # any model is built: tests/test_cli_usage.py)
    failed = subprocess.run([*cli, str(TCGA_J2K)], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1, failed.stderr
    assert TCGA_J2K.stem in failed.stderr and "0 done, 0 reused, 0 failed" not in failed.stdout
    refused = subprocess.run([*cli, "--format", "h5", str(TCGA_J2K)],
                             env=_env(), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"error: {out}: this folder holds bags made with other "
                                     "settings")
