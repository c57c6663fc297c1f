"""`slideflow extractors` (80-column table, --json, weights status here) and `slideflow
doctor` (one screen; exit 1 when the given command lacks something)."""

from __future__ import annotations

import json

import pytest
from test_cli_usage import run_cli
from typer.testing import CliRunner

import slideflow as sf
from slideflow import doctor
from slideflow.cli import app
from slideflow.model.extractors import registry
from slideflow.model.extractors.spec import ExtractorSpec, hf
from slideflow.model.extractors.weights_status import weights_status

runner = CliRunner()


def test_extractors_table_fits_80_columns():
    res = run_cli("extractors")  # COLUMNS is irrelevant: the table is laid out for 80
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["name", "dim", "licence", "package", "weights"]
    assert max(len(line) for line in lines) <= 80
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert rows["efficientnet_lite0_imagenet"] == ["efficientnet_lite0_imagenet", "1280",
                                                   "Apache-2.0", "core", "embedded"]
    assert rows["dinov2"][-1] == "local"  # no default weights: a checkpoint of your own
    assert len(rows) >= len(sf.list_extractors()) - 1  # every extractor (+ the footnote line)


def test_extractors_json_says_where_weights_are(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    res = runner.invoke(app, ["extractors", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(rows) == set(sf.list_extractors()["name"])
    lite = rows["efficientnet_lite0_imagenet"]
    assert (lite["dim"], lite["weights"], lite["package"], lite["installed"]) == \
        (1280, "embedded", "slideflow", True)
    assert rows["h_optimus_0"]["weights"] == "needs download"  # empty cache here


@pytest.mark.parametrize("cached_as", ["acme/Case-Model", "ACME/case-model"])
def test_weights_status_finds_the_hf_cache_under_any_spelling(tmp_path, monkeypatch, cached_as):
    spec = ExtractorSpec(name="test_status_hf", family="torchvision", dim=512, input_px=64,
                         license="MIT", weights=hf("acme/Case-Model", "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights_status(spec.weights) == "needs download"
    snap = tmp_path / "hub" / f"models--{cached_as.replace('/', '--')}" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "other.bin").write_bytes(b"x")
    assert weights_status(spec.weights) == "needs download"  # not one of the spec's files
    (snap / "model.safetensors").write_bytes(b"x")
    assert weights_status(spec.weights) == "cached"


def test_doctor_one_screen_no_gpu_here():
    import torch

    res = run_cli("doctor")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    text = res.stdout
    for label in ("slideflow", "reader openslide", "torch", "TensorFlow", "Ray", "HF token",
                  "HF cache", "weights here", "free disk"):
        assert any(line.startswith(label) for line in lines), label
    if not torch.cuda.is_available():
        assert "no GPU (CUDA not available)" in text
    else:
        assert "cuDNN" in text and "colour self-check passes" in text
    assert "efficientnet_lite0_imagenet" in text


def test_doctor_exit_status_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    ok = runner.invoke(app, ["doctor", "features", "-o", str(tmp_path)])
    assert ok.exit_code == 0 and "ready for `slideflow features`" in ok.output
    spec = ExtractorSpec(name="test_doctor_hf", family="torchvision", dim=512, input_px=64,
                         license="MIT", weights=hf("acme/doctor", "model.safetensors"))
    sf.register_extractor(spec)
    try:
        res = runner.invoke(app, ["doctor", "features", "-e", "test_doctor_hf"])
    finally:
        registry.unregister_extractor(spec.name)
    assert res.exit_code == 1
    assert "missing for `slideflow features`: weights of test_doctor_hf (needs download)" \
        in res.output
    monkeypatch.setattr(doctor, "torch_lines", lambda: ([doctor.Line("torch", "absent")], False))
    res = runner.invoke(app, ["doctor", "features"])
    assert res.exit_code == 1 and "missing for `slideflow features`: torch" in res.output
    assert runner.invoke(app, ["doctor", "extract-tiles"]).exit_code == 0  # no torch needed
    proc = run_cli("doctor", "bogus")
    assert proc.returncode == 2 and "error: unknown command 'bogus'" in proc.stderr


def test_gpu_decode_self_check_logic_on_the_cpu():
    """The colour self-check compares torchvision's decode with libjpeg-turbo's; run here with
    torchvision on the CPU (on a GPU host the doctor runs it with nvJPEG)."""
    msg = doctor.gpu_decode_check("cpu")
    assert "colour self-check passes" in msg, msg
