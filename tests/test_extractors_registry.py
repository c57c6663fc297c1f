"""Extractor registry: specs without torch, discovery, errors, suggestions, plugins."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

import slideflow as sf
from slideflow.errors import ExtractorNotFound, SlideflowError
from slideflow.model.extractors import catalog, families, registry
from slideflow.model.extractors.spec import ExtractorSpec


def test_import_and_listing_do_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import slideflow.model as m
        df = m.list_extractors()
        m.get_spec('efficientnet_lite0_imagenet')
        try:
            m.get_spec('no_such_model')
        except Exception:
            pass
        assert 'torch' not in sys.modules, sorted(k for k in sys.modules if 'torch' in k)[:5]
        assert 'timm' not in sys.modules
        print(len(df))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 20


def test_list_extractors_core_and_external():
    df = sf.list_extractors()
    assert {"name", "dim", "input_px", "license", "distribution", "installed",
            "weights"} <= set(df.columns)
    row = df.set_index("name").loc["efficientnet_lite0_imagenet"]
    assert row["dim"] == 1280 and row["input_px"] == 224 and row["installed"]
    assert row["distribution"] == "slideflow" and row["license"] == "Apache-2.0"
    names = set(df["name"])
    for name in ("resnet50_imagenet", "densenet121_imagenet", "efficientnet_b0_imagenet",
                 "convnext_tiny_imagenet", "vit_small_patch16_224_imagenet", "dinov2", "vit",
                 "simclr", "h_optimus_0", "virchow", "ctranspath", "retccl", "uni", "uni2",
                 "virchow2", "gigapath", "phikon", "phikon_v2"):
        assert name in names, name
    dims = df.set_index("name")["dim"]
    assert dims["uni"] == 1024 and dims["virchow2"] == 2560 and dims["ctranspath"] == 768


def test_external_names_listed_when_not_installed(monkeypatch):
    core = {k: v for k, v in registry._discover().items() if v.distribution == "slideflow"}
    monkeypatch.setattr(registry.EXTRACTORS, "_discovered", core)
    df = sf.list_extractors().set_index("name")
    assert not df.loc["uni", "installed"]
    assert df.loc["uni", "distribution"] == "slideflow-noncommercial"
    assert "slideflow_noncommercial" in df.loc["uni", "install"]
    assert not df.loc["ctranspath", "installed"]
    assert df.loc["ctranspath", "license"] == "GPL-3.0"
    assert sf.list_extractors(installed_only=True)["installed"].all()


def test_missing_distribution_names_the_package(monkeypatch):
    core = {k: v for k, v in registry._discover().items() if v.distribution == "slideflow"}
    monkeypatch.setattr(registry.EXTRACTORS, "_discovered", core)
    with pytest.raises(ExtractorNotFound) as info:
        sf.build_feature_extractor("uni")
    msg = str(info.value)
    assert "slideflow-noncommercial" in msg and "pip install ./slideflow_noncommercial" in msg
    assert isinstance(info.value, SlideflowError)
    with pytest.raises(ExtractorNotFound, match="pip install ./slideflow_gpl"):
        registry.get_spec("CTransPath")


def test_unknown_name_suggests_close_names():
    with pytest.raises(ExtractorNotFound) as info:
        registry.get_spec("resnet5_imagenet")
    assert "resnet50_imagenet" in str(info.value)
    with pytest.raises(ExtractorNotFound, match="efficientnet_lite0"):
        registry.get_spec("efficientnet_lite")
    with pytest.raises(ExtractorNotFound):
        registry.get_spec("")


def test_aliases_and_normalisation():
    assert registry.get_spec("default").name == "efficientnet_lite0_imagenet"
    assert registry.get_spec("EfficientNet-Lite0").name == "efficientnet_lite0_imagenet"
    assert registry.get_spec("H-optimus-0").name == "h_optimus_0"
    timm_spec = registry.get_spec("timm:resnet18.a1_in1k")
    assert timm_spec.family == "timm" and timm_spec.weights.repo_id == "timm/resnet18.a1_in1k"


def test_entry_points_register_licence_split_distributions():
    pytest.importorskip("slideflow_gpl")
    pytest.importorskip("slideflow_noncommercial")
    registry.refresh()
    assert registry.get_spec("ctranspath").distribution == "slideflow-gpl"
    assert registry.get_spec("uni").license == "CC-BY-NC-ND-4.0"
    assert registry.get_spec("uni_v1").name == "uni"


def test_spec_is_frozen_plain_data():
    spec = registry.get_spec("uni2") if registry.is_registered("uni2") else \
        registry.get_spec("virchow")
    with pytest.raises(AttributeError):
        spec.dim = 3  # type: ignore[misc]
    again = ExtractorSpec.from_dict(spec.to_dict())
    assert again == spec
    with pytest.raises(ValueError):
        ExtractorSpec(name="x", family="timm", dim=1, input_px=8, license="MIT",
                      interpolation="lanczos7")


PLUGIN = '''
import torch
import slideflow as sf
from slideflow.model import ExtractorSpec


class TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def build(spec, width=8):
    assert width == 8
    return TinyEncoder()


sf.register_extractor(
    ExtractorSpec(name="my_tiny_encoder", family="plugin", dim=8, input_px=32,
                  license="MIT", citation="me", cnn=True),
    build,
)
'''


def test_plugin_file_registration(tmp_path):
    import numpy as np
    import torch

    torch.set_num_threads(1)
    path = tmp_path / "my_encoder.py"
    path.write_text(PLUGIN)
    try:
        assert sf.model.load_plugin(path) == ["my_tiny_encoder"]
        assert "my_tiny_encoder" in set(sf.list_extractors()["name"])
        ext = sf.build_feature_extractor("my_tiny_encoder", pretrained=False)
        tiles = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
        feats = ext(tiles)
        assert feats.shape == (5, 8) and feats.dtype == np.float32
        assert not ext.pretrained and "RANDOM" in repr(ext)
        # weights of a plugin are loaded with the same strict checks
        sd = {k: torch.randn_like(v) for k, v in ext.model.state_dict().items()}
        torch.save(sd, tmp_path / "tiny.pth")
        ext2 = sf.build_feature_extractor("my_tiny_encoder", weights=tmp_path / "tiny.pth")
        ext.model.load_state_dict(sd)
        np.testing.assert_allclose(ext2(tiles), ext(tiles), rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            sf.model.load_plugin(path)
    finally:
        registry.unregister_extractor("my_tiny_encoder")
    assert not registry.is_registered("my_tiny_encoder")


def test_register_rejects_builtin_names_and_bad_builders():
    spec = registry.get_spec("resnet18_imagenet")
    with pytest.raises(ValueError, match="already registered"):
        sf.register_extractor(spec)
    with pytest.raises(ValueError, match="builder"):
        sf.register_extractor(ExtractorSpec(name="nobuilder", family="unknown", dim=1,
                                            input_px=8, license="MIT"))


@pytest.mark.parametrize("package,distribution", [("slideflow_gpl", "slideflow-gpl"),
                                                  ("slideflow_noncommercial",
                                                   "slideflow-noncommercial")])
def test_install_hints_match_the_installed_distributions(package, distribution):
    """The core's hints for licence-split names are checked against the real specs, both ways,
    so they cannot drift (name, licence, Slideflow 3 class)."""
    specs_module = importlib.import_module(f"{package}.specs")
    real = {s.name: s for s in specs_module.specs()}
    assert all(s.distribution == distribution for s in real.values())
    hints = {e.name: e for e in catalog.EXTERNAL if e.distribution == distribution}
    assert set(hints) == set(real), "catalog.EXTERNAL lists other names than the distribution"
    for name, hint in hints.items():
        assert (hint.license, hint.sf3_class) == (real[name].license, real[name].sf3_class), name
    assert distribution in catalog.INSTALL and f"./{package}" in catalog.INSTALL[distribution]
    eps = {ep.value.split(":")[0] for ep in entry_points(group=registry.GROUP)}
    assert f"{package}.specs" in eps, f"{package} is not registered as an entry point"


def test_sf3_classes_are_derived_from_specs(monkeypatch):
    table = registry.sf3_classes()
    assert table["slideflow.model.extractors.virchow.VirchowFeatures"] == "virchow"
    assert table["slideflow.model.extractors.uni.UNIFeatures"] == "uni"
    core = {k: v for k, v in registry._discover().items() if v.distribution == "slideflow"}
    monkeypatch.setattr(registry.EXTRACTORS, "_discovered", core)  # uninstalled: the hint still maps it
    assert registry.sf3_classes()["slideflow.model.extractors.uni.UNIFeatures"] == "uni"
    with pytest.raises(ExtractorNotFound, match="pip install ./slideflow_noncommercial"):
        sf.rebuild_extractor({"class": "slideflow.model.extractors.uni.UNIFeatures",
                              "kwargs": {}})


def test_every_core_family_has_a_registered_builder():
    for spec in catalog.specs():
        assert spec.builder is None and callable(families.family_builder(spec.family)), spec.name
    assert families.import_failures() == {}
    with pytest.raises(ValueError, match="registered twice"):
        families.register_family("timm")(lambda spec: None)
