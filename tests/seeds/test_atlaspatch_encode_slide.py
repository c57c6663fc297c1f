"""AtlasPatch's `encode-slide` guide (seed 001) as `slideflow atlaspatch encode-slide`.
Offline: the hub slide encoders (titan, prism, moozy) need gated weights, so the examples run
with the 'mean' slide encoder over the embedded efficientnet_lite0 (`--feature-extractors`, our
extension for encoders that read any tile features); see docs/porting.md."""

from __future__ import annotations

import h5py
import numpy as np
from typer.testing import CliRunner

from slideflow.cli import app
from slideflow.cli.errors import run_app

from conftest import CMU

runner = CliRunner()
ARGS = ["--slide-encoders", "mean", "--feature-extractors", "efficientnet_lite0_imagenet",
        "--patch-size", "112", "--target-mag", "10", "--feature-precision", "float32"]


def test_one_slide_appends_slide_features(tmp_path):
    res = runner.invoke(app, ["atlaspatch", "encode-slide", str(CMU), "--output",
                              str(tmp_path / "output"), *ARGS, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "output" / "patches" / "CMU-1-Small-Region.h5") as f:
        feats = f["features/efficientnet_lite0_imagenet"][...]
        vec = f["slide_features/mean"][...]
        assert f["coords"].shape == (len(feats), 5)
    np.testing.assert_allclose(vec, feats.mean(axis=0), rtol=1e-5, atol=1e-6)
    again = runner.invoke(app, ["atlaspatch", "encode-slide", str(CMU), "-o",
                                str(tmp_path / "output"), *ARGS])
    assert again.exit_code == 0 and "1 reused" in again.output


def test_directory_of_slides(tmp_path):
    folder = tmp_path / "slides" / "nested"
    folder.mkdir(parents=True)
    (folder / CMU.name).symlink_to(CMU)
    flat = runner.invoke(app, ["atlaspatch", "encode-slide", str(tmp_path / "slides"), "-o",
                               str(tmp_path / "o1"), *ARGS])
    assert "0 done" in flat.output  # without --recursive nested slides are not scanned
    deep = runner.invoke(app, ["atlaspatch", "encode-slide", str(tmp_path / "slides"), "-o",
                               str(tmp_path / "o2"), *ARGS, "--recursive"])
    assert deep.exit_code == 0, deep.output
    assert (tmp_path / "o2" / "patches" / "CMU-1-Small-Region.h5").exists()


def test_encoder_without_tile_extractor_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["atlaspatch", "encode-slide", str(CMU), "-o", str(tmp_path),
                              "--slide-encoders", "mean", "--patch-size", "112",
                              "--target-mag", "10"])
    assert res.exit_code == 2 and "--feature-extractors" in res.output


def test_prism_and_moozy_in_one_run_titan_separately(tmp_path, monkeypatch, capsys):
    """`--slide-encoders prism,moozy` at 224 px / 20x: both are accepted together (each gets the
    patch stage of its own tile encoder, Virchow and Lunit ViT-S/8); offline, the run stops at
    the first gated checkpoint, names it and how to get it, and writes nothing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    out = tmp_path / "output"
    code = run_app(app, ["atlaspatch", "encode-slide", str(CMU), "--output", str(out),
                         "--slide-encoders", "prism,moozy", "--patch-size", "224",
                         "--target-mag", "20", "--device", "cpu"], "slideflow")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: prism:") and "Traceback" not in err
    assert "paige-ai/Prism" in err and "HF_TOKEN" in err, err
    assert not out.exists()
    # titan expects 512-px patches: refused before any weights are looked up
    titan = runner.invoke(app, ["atlaspatch", "encode-slide", str(CMU), "-o", str(out),
                                "--slide-encoders", "prism,titan", "--patch-size", "224",
                                "--target-mag", "20"])
    assert titan.exit_code == 2 and "titan" in titan.output and "512" in titan.output
    assert not out.exists()
