"""`mixed_precision='auto'` / `--precision auto` on the CPU: bf16 only with native bf16 flags
and a passing agreement check; fp32 elsewhere; recorded in provenance and the resume key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.model.extractors import cpu_precision
from slideflow.model.extractors.cpu_precision import (
    MIN_COSINE,
    choose_cpu_precision,
    cpu_flags,
    native_bf16,
    probe_batch,
)

ZEN4 = ["fpu", "avx2", "avx512f", "avx512_bf16"]
SPR = ["avx2", "avx512f", "amx_tile", "amx_bf16"]
AVX2 = ["fpu", "sse4_2", "avx2", "fma"]


def test_flags_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n"
                    "\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert native_bf16(ZEN4) and native_bf16(SPR) and not native_bf16(AVX2)
    assert not native_bf16([])


def test_probe_is_deterministic_tissue_coloured():
    a, b = probe_batch(64), probe_batch(64)
    assert a.dtype == torch.uint8 and a.shape == (8, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a, probe_batch(64, seed=1))
    assert 100 < a.float().mean() < 230 and a.float().std() > 10


@pytest.fixture(scope="module")
def lite():
    return sf.build_feature_extractor("efficientnet_lite0_imagenet", batch_size=8)


def test_no_native_bf16_means_fp32_without_a_check(lite, monkeypatch):
    monkeypatch.setattr(cpu_precision, "bf16_agreement",
                        lambda e: pytest.fail("no check without native bf16"))
    assert choose_cpu_precision(lite, AVX2) == (
        "fp32", "auto: the CPU has no native bf16 (AVX512-BF16/AMX)")


@pytest.mark.parametrize("cosine,expect", [(0.9995, "bf16"), (MIN_COSINE, "bf16"),
                                           (0.9979, "fp32")])
def test_native_bf16_needs_the_check(lite, monkeypatch, cosine, expect):
    monkeypatch.setattr(cpu_precision, "bf16_agreement", lambda e: cosine)
    for flags in (ZEN4, SPR):
        precision, why = choose_cpu_precision(lite, flags)
        assert precision == expect and f"{cosine:.4f}" in why


def test_agreement_is_measured_on_the_extractor(lite):
    cos = cpu_precision.bf16_agreement(lite)
    assert 0.9 < cos <= 1.0 + 1e-6


def _build(monkeypatch, flags, **kw):
    monkeypatch.setattr(cpu_precision, "cpu_flags", lambda *a: frozenset(flags))
    return sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=1,
                                      batch_size=4, **kw)


def test_auto_end_to_end_on_the_extractor(monkeypatch):
    monkeypatch.setattr(cpu_precision, "bf16_agreement", lambda e: 0.9999)
    bf = _build(monkeypatch, ZEN4, mixed_precision="auto")
    assert bf.precision == "bf16" and "native bf16" in bf.precision_note
    fp = _build(monkeypatch, AVX2, mixed_precision="auto")
    assert fp.precision == "fp32" and "no native bf16" in fp.precision_note
    forced = _build(monkeypatch, ZEN4, mixed_precision="fp32")
    assert forced.precision == "fp32" and forced.precision_note is None
    default = _build(monkeypatch, ZEN4)  # the Python API's default stays exact fp32
    assert default.precision == "fp32"
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), np.uint8)
    a, b = bf(x), fp(x)
    np.testing.assert_array_equal(b, forced(x))  # fp32 is fp32, bit for bit
    assert not np.array_equal(a, b)  # bf16 really ran
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_cli_auto_records_precision_and_resume_key(tmp_path, slides, monkeypatch):
    """--precision auto (default) on a 'native bf16' CPU writes bf16 bags and records it;
    --precision fp32 gives other bags (the resume key differs), not a reuse."""
    import json

    from typer.testing import CliRunner

    from slideflow.cli import app
    from slideflow.io.bags import read_bag_meta

    from conftest import CMU

    monkeypatch.setattr(cpu_precision, "cpu_flags", lambda *a: frozenset(ZEN4))
    monkeypatch.setattr(cpu_precision, "bf16_agreement", lambda e: 0.9999)
    ckpt = tmp_path / "r18.pth"
    torch.save(sf.build_feature_extractor("resnet18_imagenet", pretrained=False,
                                          seed=1).model.state_dict(), ckpt)
    common = [str(CMU), "--tile-px", "64", "--tile-um", "256", "-e", "resnet18_imagenet",
              "--weights", str(ckpt), "--qc", "none"]
    auto, fp32 = tmp_path / "auto", tmp_path / "fp32"
    res = CliRunner().invoke(app, ["features", *common, "-o", str(auto)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((auto / "bags_config.json").read_text())
    assert cfg["provenance"]["precision"] == "bf16"
    assert read_bag_meta(auto, "CMU-1-Small-Region")["request"]["precision"] == "bf16"
    res = CliRunner().invoke(app, ["features", *common, "-o", str(fp32), "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert json.loads((fp32 / "bags_config.json").read_text())["provenance"]["precision"] == \
        "fp32"
    assert "precision" not in read_bag_meta(fp32, "CMU-1-Small-Region")["request"]
    a = sf.io.read_bag(auto / "CMU-1-Small-Region.pt").features
    b = sf.io.read_bag(fp32 / "CMU-1-Small-Region.pt").features
    assert a.shape == b.shape and not np.array_equal(a, b)
    res = CliRunner().invoke(app, ["features", *common, "-o", str(auto), "--precision", "fp32"])
    assert res.exit_code != 0 and "precision" in res.output  # never mixed into a bf16 folder
    res = CliRunner().invoke(app, ["features", *common, "-o", str(auto), "--precision", "fp8"])
    assert res.exit_code == 2 and "auto, fp32, fp16 or bf16" in res.output
