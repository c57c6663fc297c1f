"""Architectures and the runtime object: every spec builds with its declared dimension,
preprocessing matches a hand computation, layers/pooling, conversions of self-supervised
checkpoints, and the engine contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.model.extractors import registry
from slideflow.model.extractors.preprocess import Preprocess

torch.set_num_threads(1)
RNG = np.random.default_rng(11)
TILES = RNG.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(sf.list_extractors(installed_only=True)["name"]))
def test_every_spec_builds_with_its_declared_dim(name):
    """Meta device: the whole architecture is built and run for shapes, without memory."""
    spec = registry.get_spec(name)
    ext = sf.build_feature_extractor(name, device="meta", pretrained=False)
    assert ext.num_features == spec.dim and ext.input_px == spec.input_px
    x = torch.zeros(2, 3, spec.input_px + 32, spec.input_px + 32, dtype=torch.uint8,
                    device="meta")
    out = ext.forward_preprocessed(ext.preprocess(x))
    assert tuple(out.shape) == (2, spec.dim), name
    assert ext.license == spec.license and ext.citation == spec.citation
    json.dumps(ext.dump_config())


def test_timm_any_name_from_pretrained_cfg(monkeypatch, tmp_path):
    ext = sf.build_feature_extractor("timm:resnet18.a1_in1k", pretrained=False, device="meta")
    assert ext.num_features == 512 and ext.input_px == 224 and ext.channels_last
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(sf.errors.WeightsError, match="timm/resnet18.a1_in1k"):
        sf.build_feature_extractor("timm:resnet18.a1_in1k")


# ---------------------------------------------------------------------------- preprocessing
def test_preprocess_resize_crop_equals_hand_computation():
    """Shorter side 260 -> 130 by exact 2x2 area averaging, center crop 112, normalise."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pre = Preprocess(input_px=112, mean=mean, std=std, resize_px=130, center_crop=112,
                     interpolation="area")
    img = RNG.integers(0, 256, (2, 260, 300, 3), dtype=np.uint8)
    out = pre(torch.from_numpy(img).permute(0, 3, 1, 2)).numpy()

    # by hand: 2x2 block means, rounded like uint8 resizing, then crop offsets and normalise
    small = img.reshape(2, 130, 2, 150, 2, 3).astype(np.float64).mean(axis=(2, 4))
    small = np.round(small)
    top, left = int(round((130 - 112) / 2)), int(round((150 - 112) / 2))
    crop = small[:, top:top + 112, left:left + 112]
    ref = ((crop / 255.0 - np.array(mean)) / np.array(std)).transpose(0, 3, 1, 2)
    assert out.shape == (2, 3, 112, 112) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-5)
    assert pre.output_size(260, 300) == (112, 112)
    assert "center_crop(112)" in pre.describe() and "area" in pre.describe()


def test_preprocess_bilinear_antialias_matches_pil():
    from PIL import Image

    img = RNG.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    img = np.ascontiguousarray(np.cumsum(img, axis=1) % 256).astype(np.uint8)  # structure
    pre = Preprocess(input_px=224, mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear",
                     antialias=True)
    ours = pre(torch.from_numpy(img).permute(2, 0, 1)[None])[0].numpy().transpose(1, 2, 0)
    pil = np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR)) / 255.0
    diff = np.abs(ours - pil) * 255
    assert diff.max() <= 1.01 and diff.mean() < 0.3


def test_preprocess_skips_resize_and_crop_only_is_exact():
    pre = Preprocess(input_px=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = torch.from_numpy(TILES).permute(0, 3, 1, 2)
    np.testing.assert_allclose(pre(x).numpy(), (x.numpy() / 255 - 0.5) / 0.5, atol=1e-6)
    crop = Preprocess(input_px=32, mean=(0, 0, 0), std=(1, 1, 1), center_crop=32)
    np.testing.assert_allclose(crop(x).numpy(), x.numpy()[:, :, 16:48, 16:48] / 255, atol=1e-7)
    with pytest.raises(TypeError):
        pre(x.float())


def test_preprocess_overrides_and_slideflow3_order():
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=False,
                                     center_crop=48, order="crop_resize", device="meta")
    assert ext.transform.output_size(64, 64) == (48, 48)
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=256,
                                     center_crop=True, device="meta")
    # both given, no order: Slideflow 3's order (crop 224, then shorter side to 256)
    assert ext.transform.output_size(300, 400) == (256, 256)
    assert ext.transform.order == "crop_resize" and ext.transform.antialias is False
    kw = ext.dump_config()["kwargs"]
    assert kw["resize"] == 256 and kw["center_crop"] is True
    ours = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=256,
                                      center_crop=True, order="resize_crop", device="meta")
    assert ours.transform.output_size(300, 400) == (224, 224)


# ---------------------------------------------------------------------------- runtime contract
@pytest.fixture(scope="module")
def resnet():
    return sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=False,
                                      batch_size=3)


def test_runtime_attributes(resnet):
    assert resnet.num_features == 512 and resnet.device.type == "cpu"
    assert resnet.precision == "fp32" and resnet.channels_last and resnet.batch_size == 3
    vit = sf.build_feature_extractor("vit", pretrained=False, size="tiny", device="meta")
    assert not vit.channels_last and vit.num_features == 192


def test_embed_layouts_and_chunking(resnet):
    ref = resnet.embed(TILES, batch_size=8)
    assert ref.shape == (4, 512) and ref.dtype == np.float32
    np.testing.assert_allclose(resnet.embed(TILES), ref, rtol=1e-4, atol=1e-5)  # chunks of 3
    nchw = torch.from_numpy(TILES).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_allclose(resnet(nchw), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(resnet(torch.from_numpy(TILES)), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(resnet(TILES[0]), ref[:1], rtol=1e-4, atol=1e-5)
    assert resnet(TILES[:0]).shape == (0, 512)
    with pytest.raises(TypeError):
        resnet(TILES.astype(np.float32))
    pre = resnet.preprocess(nchw)
    assert pre.dtype == torch.float32 and pre.shape == (4, 3, 64, 64)
    feats = resnet.forward_preprocessed(pre)
    assert feats.dtype == torch.float32 and feats.shape == (4, 512)


def test_call_dispatches_wsi_and_tfrecords(resnet, monkeypatch):
    import slideflow.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "wsi_features", lambda e, w, **k: calls.append(("wsi", k)))
    monkeypatch.setattr(pipeline, "tfrecord_features",
                        lambda e, p, **k: calls.append(("tfr", str(p))))

    class FakeWSI:
        grid = np.ones((2, 2), bool)

        def tiles(self, **kwargs):
            return iter(())

    resnet(FakeWSI(), num_threads=1)
    resnet("slide.tfrecords")
    assert calls == [("wsi", {"num_threads": 1}), ("tfr", "slide.tfrecords")]
    with pytest.raises(TypeError):
        resnet("slide.svs")


def test_layers_and_pooling(resnet):
    both = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=False,
                                      layers=["layer3", "layer4"])
    feats = both(TILES)
    assert both.num_features == 256 + 512 and feats.shape == (4, 768)
    np.testing.assert_allclose(feats[:, 256:], resnet(TILES), rtol=1e-4, atol=1e-5)
    maxed = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=False,
                                       layers="layer4", pooling="max")
    assert (maxed(TILES) >= feats[:, 256:] - 1e-5).all()
    flat = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=False,
                                      layers="layer4", pooling=None, tile_px=64)
    assert flat.num_features == 512 * 2 * 2 and flat(TILES).shape == (4, 2048)
    cfg = both.dump_config()["kwargs"]
    assert cfg["layers"] == ["layer3", "layer4"] and cfg["pooling"] == "avg"
    with pytest.raises(ValueError, match="unknown layers"):
        sf.build_feature_extractor("resnet18_imagenet", pretrained=False, layers="layer9")


# ---------------------------------------------------------------------------- conversions
def test_ctranspath_loads_original_checkpoint_layout(tmp_path):
    pytest.importorskip("slideflow_gpl")
    ext = sf.build_feature_extractor("ctranspath", pretrained=False, seed=2)
    tiles = RNG.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    ref = ext(tiles)
    assert ref.shape == (2, 768) and np.isfinite(ref).all()
    sd = dict(ext.model.state_dict())
    # the published checkpoint also stores the derived buffers, under checkpoint['model']
    for name, buf in ext.model.named_buffers():
        if name.endswith(("attn_mask", "relative_position_index")):
            sd[name] = buf
    assert "layers.2.blocks.5.attn_mask" in sd and "layers.3.blocks.1.attn_mask" not in sd
    torch.save({"model": sd}, tmp_path / "ctranspath.pth")
    loaded = sf.build_feature_extractor("ctranspath", weights=tmp_path / "ctranspath.pth")
    np.testing.assert_array_equal(loaded(tiles), ref)


def _dinov2_checkpoint(net, registers: int) -> dict:
    """The timm model's weights written the way facebookresearch/dinov2 saves a teacher."""
    sd = {}
    for k, v in net.state_dict().items():
        k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 2}.{i}." + k.split(".", 2)[2]  # block_chunks
        sd[k] = v.clone()
    if registers:
        sd["register_tokens"] = sd.pop("reg_token")
        cls_pos = torch.randn(1, 1, sd["cls_token"].shape[-1])
        sd["cls_token"] = sd["cls_token"] - cls_pos
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(8, 8)
    return {"teacher": teacher, "iteration": 10}


def test_dinov2_config_and_teacher_checkpoint(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("student:\n  arch: vit_small\n  patch_size: 14\n  ffn_layer: swiglufused\n"
                      "  num_register_tokens: 4\n  layerscale: 1.0e-05\ncrops:\n"
                      "  global_crops_size: 56\n")
    src = sf.build_feature_extractor("dinov2", config=config, pretrained=False, seed=5)
    assert src.num_features == 384 and src.input_px == 56
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # well-conditioned weights (the default init makes tiny features)
        for p in src.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    tiles = RNG.integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    ref = src(tiles)
    torch.save(_dinov2_checkpoint(src.model, 4), tmp_path / "teacher_checkpoint.pth")
    ext = sf.build_feature_extractor("dinov2", config=config,
                                     weights=tmp_path / "teacher_checkpoint.pth")
    np.testing.assert_allclose(ext(tiles), ref, rtol=1e-5, atol=1e-5)
    kw = ext.dump_config()["kwargs"]
    assert kw["config"] == str(config) and kw["weights"].endswith("teacher_checkpoint.pth")


def test_hf_vit_conversion_round_trip():
    from timm.models.vision_transformer import VisionTransformer

    from slideflow.model.extractors.families.vit_family import convert_hf_vit
    from slideflow.model.extractors.weights import load_strict

    def tiny():
        torch.manual_seed(0)
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                 num_heads=2, num_classes=0, init_values=1e-5).eval()

    net = tiny()
    for p in net.parameters():
        p.data.normal_()
    sd = net.state_dict()
    hf = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings":
          sd["pos_embed"], "embeddings.mask_token": torch.zeros(1, 32),
          "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
          "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    for i in range(2):
        b, p = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{kind}"].chunk(3)
            hf.update({f"{p}attention.attention.query.{kind}": q,
                       f"{p}attention.attention.key.{kind}": k,
                       f"{p}attention.attention.value.{kind}": v,
                       f"{p}attention.output.dense.{kind}": sd[f"{b}attn.proj.{kind}"],
                       f"{p}norm1.{kind}": sd[f"{b}norm1.{kind}"],
                       f"{p}norm2.{kind}": sd[f"{b}norm2.{kind}"],
                       f"{p}mlp.fc1.{kind}": sd[f"{b}mlp.fc1.{kind}"],
                       f"{p}mlp.fc2.{kind}": sd[f"{b}mlp.fc2.{kind}"]})
        hf[f"{p}layer_scale1.lambda1"] = sd[f"{b}ls1.gamma"]
        hf[f"{p}layer_scale2.lambda1"] = sd[f"{b}ls2.gamma"]
    other = tiny()
    load_strict(other, convert_hf_vit({f"dinov2.{k}": v for k, v in hf.items()}, 2),
                expected_unexpected=("embeddings.mask_token",))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(other(x), net(x))


def test_cls_mean_excludes_registers():
    from timm.models.vision_transformer import VisionTransformer

    from slideflow.model.extractors.families.timm_family import ClsMeanFeatures

    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                            num_classes=0, reg_tokens=4, global_pool="").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        tokens = net.forward_features(x)
        out = ClsMeanFeatures(net)(x)
    assert tokens.shape == (1, 1 + 4 + 16, 16) and out.shape == (1, 32)
    torch.testing.assert_close(out[:, 16:], tokens[:, 5:].mean(1))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_native_resnet_equals_torchvision(arch):
    """`families.resnet` replaces torchvision's ResNets: same module names in the same order
    (checkpoints load strictly, BatchNorm folding finds the same pairs), same outputs."""
    import torchvision

    from slideflow.model.extractors.families.resnet import resnet

    tv, ours = getattr(torchvision.models, arch)(weights=None).eval(), resnet(arch).eval()
    assert [n for n, _ in tv.named_modules()] == [n for n, _ in ours.named_modules()]
    g = torch.Generator().manual_seed(3)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v)
          for k, v in tv.state_dict().items()}
    sd = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in sd.items()}
    tv.load_state_dict(sd)
    ours.load_state_dict(sd)  # strict
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_resnet50_one_slide_job_imports_only_what_it_uses(tmp_path):
    """Cold one-slide job: building ResNet50 from a local file imports neither torchvision
    (seconds: its ops import torch._dynamo), torch._dynamo itself (normal_ on meta tensors
    would), nor the slide-embedding outputs."""
    import subprocess
    import sys

    from slideflow.model.extractors.families.resnet import resnet

    ckpt = tmp_path / "r50.pth"
    torch.save(resnet("resnet50").state_dict(), ckpt)
    code = ("import sys, slideflow as sf; "
            f"e = sf.build_feature_extractor('resnet50_imagenet', weights=r'{ckpt}', "
            "device='cpu', batch_size=2); "
            "import numpy as np; f = e(np.zeros((2, 64, 64, 3), np.uint8)); "
            "assert f.shape == (2, 2048), f.shape; "
            "bad = [m for m in ('torchvision', 'slideflow.model.slide_encoders.outputs', "
            "'transformers', 'open_clip', 'timm', 'torch._dynamo') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
