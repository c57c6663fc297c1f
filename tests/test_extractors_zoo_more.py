"""H0-mini and MUSK's multi-scale feature: the official key layout loads strictly, and the
features equal the reference computation done by hand (the H0-mini card's CLS + mean of the
patch tokens on timm's own model; MUSK's MultiScaleForward on a depth-reduced tower)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slideflow as sf
from slideflow.model.extractors import registry

torch.set_num_threads(1)
HOPT_MEAN = torch.tensor([0.707223, 0.578729, 0.703617]).view(1, 3, 1, 1)
HOPT_STD = torch.tensor([0.211883, 0.230117, 0.177517]).view(1, 3, 1, 1)


def _h0_mini_reference() -> torch.nn.Module:
    """The model as the card / Slideflow 3 build it with timm (random weights)."""
    import timm

    torch.manual_seed(3)
    return timm.create_model(
        "vit_base_patch14_reg4_dinov2", pretrained=False, img_size=224, num_classes=0,
        init_values=1e-5, mlp_ratio=4096 / 768, global_pool="",
        mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU).eval()


def test_h0_mini_official_layout_loads_and_gives_the_cards_feature(tmp_path):
    ref = _h0_mini_reference()
    sd = ref.state_dict()
    # the released layout: 4 registers outside the 16x16 position grid, packed SwiGLU (fc1
    # 768 -> 4096, gate halves it, fc2 2048 -> 768), LayerScale, 12 blocks, no head
    assert sd["reg_token"].shape == (1, 4, 768) and sd["pos_embed"].shape == (1, 256, 768)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4096, 768)
    assert sd["blocks.0.mlp.fc2.weight"].shape == (768, 2048)
    assert "blocks.11.ls2.gamma" in sd and "blocks.12.norm1.weight" not in sd
    assert not any(k.startswith("head.") for k in sd)
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)

    ext = sf.build_feature_extractor("h0_mini", weights=str(path), device="cpu")  # strict
    assert ext.num_features == 1536
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255 - HOPT_MEAN) / HOPT_STD
    with torch.no_grad():
        out = ref(x)                                   # the card: (B, 261, 768)
    assert out.shape == (2, 261, 768) and ref.num_prefix_tokens == 5
    want = torch.cat([out[:, 0], out[:, ref.num_prefix_tokens:].mean(1)], dim=-1)
    got = ext(tiles)
    assert got.shape == (2, 1536)
    assert np.abs(got - want.numpy()).max() < 1e-4

    cls = sf.build_feature_extractor("h0_mini", weights=str(path), device="cpu", output="cls")
    assert cls.num_features == 768 and cls.dump_config()["kwargs"]["output"] == "cls"
    assert np.abs(cls(tiles) - out[:, 0].numpy()).max() < 1e-4


def test_h0_mini_refuses_a_checkpoint_with_another_layout(tmp_path):
    sd = _h0_mini_reference().state_dict()
    sd.pop("reg_token")                                # a no-register ViT-B/14
    sd["head.weight"] = torch.zeros(2, 768)
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(sf.errors.WeightsError, match="reg_token"):
        sf.build_feature_extractor("h0_mini", weights=str(tmp_path / "bad.bin"), device="cpu")


def _musk_small(**kw):
    from slideflow.model.extractors.families import musk_family

    torch.manual_seed(7)
    return musk_family.MUSKVision(img=32, patch=16, dim=16, depth=2, heads=2, hidden=24,
                                  **kw).eval()


def test_musk_multiscale_is_musks_multiscaleforward_by_hand():
    plain = _musk_small()
    ms = _musk_small(ms_aug=True)
    ms.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        up = F.interpolate(x, size=64, mode="bicubic")  # MUSK: scale 2, no antialias
        pieces = [up[..., :32, :32], up[..., :32, 32:], up[..., 32:, :32], up[..., 32:, 32:]]
        mean2 = torch.stack([plain(p) for p in pieces]).mean(0)
        want = torch.cat([plain(x), mean2], dim=-1)
        got = ms(x)
        assert got.shape == (3, 32) and ms.num_features == 32
        assert torch.allclose(got, want, atol=1e-5)
        # pieces are kept per tile: a batch gives each tile's own feature
        assert torch.allclose(ms(x[1:2]), want[1:2], atol=1e-5)
        headed = _musk_small(ms_aug=True, with_head=True, out_norm=True)
        headed.load_state_dict(plain.state_dict())
        head = F.normalize(plain.vision_head(plain(x)), dim=-1)  # MUSK: head on [:, :1024]
        assert headed.num_features == 16 and torch.allclose(headed(x), head, atol=1e-5)


def test_musk_default_is_the_readme_multiscale_feature():
    spec = registry.get_spec("musk")
    ext = sf.build_feature_extractor("musk", device="meta", pretrained=False)
    assert spec.dim == ext.num_features == 2048
    assert ext.dump_config()["kwargs"]["ms_aug"] is True
    one = sf.build_feature_extractor("musk", device="meta", pretrained=False, ms_aug=False)
    assert one.num_features == 1024 and one.dump_config()["kwargs"]["ms_aug"] is False
    head = sf.build_feature_extractor("musk", device="meta", pretrained=False, with_head=True)
    assert head.num_features == 1024


# ---------------------------------------------------------------------------- licences
def test_chief_lives_with_the_noncommercial_models_and_builds_with_gpl_code(monkeypatch):
    """CHIEF's README: GPLv3 code, non-commercial academic use: the non-commercial terms
    decide the distribution; the CTransPath architecture comes from slideflow_gpl."""
    from slideflow.model.slide_encoders import get_slide_spec

    spec = registry.get_spec("chief_ctranspath")
    assert spec.distribution == get_slide_spec("chief").distribution == \
        "slideflow-noncommercial"
    assert "non-commercial" in spec.license and "GPL-3.0" in spec.license
    ext = sf.build_feature_extractor("chief_ctranspath", pretrained=False, device="meta")
    assert ext.num_features == 768
    import sys

    monkeypatch.setitem(sys.modules, "slideflow_gpl", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "slideflow_gpl.ctranspath", raising=False)
    with pytest.raises(sf.errors.ExtractorNotFound, match=r"pip install ./slideflow_gpl"):
        registry.resolve_builder(spec)


@pytest.mark.parametrize("name, licence", [
    ("gpfm", "CC-BY-NC-ND-4.0"),                       # birkhoffkiki/GPFM LICENSE
    ("plip", "no licence"),                            # vinid/plip card, repo w/o LICENSE
    ("h_optimus_1", "academic research"),              # Bioptimus release post
])
def test_checked_licences(name, licence):
    spec = registry.get_spec(name)
    assert licence in spec.license and spec.distribution == "slideflow-noncommercial"
    assert "licence" in spec.reference.lower() or "LICENSE" in spec.reference


# ---------------------------------------------------------------------------- Slideflow 3 bags
def test_slideflow3_h0_mini_and_musk_bags_rebuild_with_their_settings(tmp_path):
    """slideflow-noncommercial's H0MiniFeatures (pool 'cls' by default, no resize) and
    MUSKFeatures (ms_aug on, out_norm on, center crop 384) rebuild as they ran."""
    from slideflow.model.extractors.rebuild import extractor_arguments, rebuild_extractor

    ref = _h0_mini_reference()
    path = tmp_path / "h0.bin"
    torch.save(ref.state_dict(), path)
    cfg = {"extractor": {"class": "slideflow.model.extractors.h0_mini.H0MiniFeatures",
                         "kwargs": {"weights": str(path), "pool": "cls"}},
           "normalizer": None, "num_features": 768}
    ext, _ = rebuild_extractor(cfg, device="cpu")
    assert ext.name == "h0_mini" and ext.num_features == 768
    args = extractor_arguments(cfg["extractor"])
    assert (args["resize"], args["center_crop"], args["output"]) == (False, False, "cls")
    tiles = np.random.default_rng(1).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    x = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255 - HOPT_MEAN) / HOPT_STD
    with torch.no_grad():
        want = ref(x)[:, 0].numpy()
    assert np.abs(ext(tiles) - want).max() < 1e-4
    mean = extractor_arguments({"class": "slideflow.model.extractors.h0_mini.H0MiniFeatures",
                                "kwargs": {"weights": "w", "pool": "cls_mean"}})
    assert mean["output"] == "cls_mean"

    musk = {"class": "slideflow_noncommercial.extractors.musk.MUSKFeatures",
            "kwargs": {"ms_aug": True, "with_head": False, "out_norm": True}}
    args = extractor_arguments(musk)
    assert args["name"] == "musk" and args["center_crop"] == 384 and not args["resize"]
    assert (args["ms_aug"], args["with_head"], args["out_norm"]) == (True, False, True)
    assert args["norm_mean"] == [0.5, 0.5, 0.5]
    ext, _ = rebuild_extractor({"extractor": musk, "num_features": 2048}, pretrained=False,
                               device="meta")
    assert ext.num_features == 2048 and ext.dump_config()["kwargs"]["out_norm"] is True
