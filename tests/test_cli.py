"""The command line drives the same engine (typer CliRunner, in process)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

import slideflow as sf
from slideflow.cli import app, shard

from conftest import CMU, TCGA_J2K

runner = CliRunner()


def test_info_json(slides):
    res = runner.invoke(app, ["info", str(CMU), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["dimensions"] == [2220, 2967] and data["mpp"] == 0.499


def test_preview_png(tmp_path, slides):
    out = tmp_path / "p.png"
    res = runner.invoke(app, ["preview", str(CMU), "--tile-px", "128", "--tile-um", "256",
                              "-o", str(out), "--width", "300"])
    assert res.exit_code == 0, res.output
    assert out.exists() and "tiles=7/20" in res.output


def test_features_batch_with_a_bad_slide(tmp_path, slides):
    folder = tmp_path / "slides"
    folder.mkdir()
    for p in (CMU, TCGA_J2K):
        (folder / p.name).symlink_to(p)
    out = tmp_path / "bags"
    res = runner.invoke(app, ["features", str(folder), "-o", str(out), "--tile-px", "112",
                              "--tile-um", "224", "--format", "h5", "--qc", "none"])
    assert res.exit_code == 1, res.output  # a failed slide makes the run fail...
    assert "1 done" in res.output and "FAILED tcga-cr-7395-01a-01-ts1" in res.output
    bag = sf.io.read_bag(out / "CMU-1-Small-Region.h5")  # ...after finishing the others
    assert bag.features.shape == (24, 1280)
    np.testing.assert_array_equal(bag.coords, sf.WSI(CMU, 112, 224).coords)


def test_shard_for_array_jobs(monkeypatch):
    items = list(range(10))
    assert shard(items, "1/3") == [1, 4, 7]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert shard(items, None) == [2, 6]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert shard(items, None) == items


def test_extractors_table():
    res = runner.invoke(app, ["extractors"])
    assert res.exit_code == 0 and "efficientnet_lite0_imagenet" in res.output
