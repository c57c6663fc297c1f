"""AtlasPatch's 66 extractor names against slideflow's catalog: each resolves to a spec with the
output dimension AtlasPatch documents, or is refused with the reason; the general-purpose
backbones (torchvision ConvNeXt / ViT, DINOv2, DINOv3, OpenAI CLIP, OpenMidnight) load their
official key layouts strictly and compute what the reference model computes on tiles
preprocessed by hand; offline, the real loading path names where the weights live.

Weights are random (no network): checkpoints are written by the test from the reference
architectures. Large towers are built on the meta device (shapes only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slideflow as sf
from slideflow.compat import atlaspatch
from slideflow.errors import InvalidArgumentError, WeightsError
from slideflow.model.extractors import catalog, registry

torch.set_num_threads(1)

# AtlasPatch README, "Available Feature Extractors": name -> documented output dim
ATLASPATCH = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
    "convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024, "convnext_large": 1536,
    "vit_b_16": 768, "vit_b_32": 768, "vit_l_16": 1024, "vit_l_32": 1024, "vit_h_14": 1280,
    "dinov2_small": 384, "dinov2_base": 768, "dinov2_large": 1024, "dinov2_giant": 1536,
    "dinov3_vits16": 384, "dinov3_vits16_plus": 384, "dinov3_vitb16": 768,
    "dinov3_vitl16": 1024, "dinov3_vitl16_sat": 1024, "dinov3_vith16_plus": 1280,
    "dinov3_vit7b16": 4096, "dinov3_vit7b16_sat": 4096,
    "uni_v1": 1024, "uni_v2": 1536, "phikon_v1": 768, "phikon_v2": 1024, "virchow_v1": 2560,
    "virchow_v2": 2560, "prov_gigapath": 1536, "chief-ctranspath": 768, "midnight": 3072,
    "musk": 1024, "openmidnight": 1536, "pathorchestra": 512, "h_optimus_0": 1536,
    "h_optimus_1": 1536, "h0_mini": 1536, "conch_v1": 512, "conch_v15": 768, "hibou_b": 768,
    "hibou_l": 1024, "lunit_resnet50_bt": 2048, "lunit_resnet50_swav": 2048,
    "lunit_resnet50_mocov2": 2048, "lunit_vit_small_patch16_dino": 384,
    "lunit_vit_small_patch8_dino": 384,
    "clip_rn50": 1024, "clip_rn101": 512, "clip_rn50x4": 640, "clip_rn50x16": 768,
    "clip_rn50x64": 1024, "clip_vit_b_32": 512, "clip_vit_b_16": 512, "clip_vit_l_14": 768,
    "clip_vit_l_14_336": 768, "plip": 512, "medsiglip": 1152, "quilt_b_32": 512,
    "quilt_b_16": 512, "quilt_b_16_pmb": 512, "biomedclip": 512, "omiclip": 768,
}
# slideflow's default output differs from AtlasPatch's (docs/porting.md says how to match it)
DIFFERENT = {"musk": 2048}  # MUSK's multi-scale feature (README); AtlasPatch: 1 scale, 1024
_OLD_CORE = {"resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet",
             "convnext_tiny_imagenet", "virchow", "midnight", "h_optimus_0", "hibou_b",
             "hibou_l", "dinov2_vitl14"}
NEW = sorted(n for n, ours in atlaspatch.ALIASES.items()
             if ours in {s.name for s in catalog.specs()} - _OLD_CORE)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SAT = ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143))


def test_atlaspatch_names_resolve_or_say_why():
    assert len(ATLASPATCH) == 66
    aliases, refused = set(atlaspatch.ALIASES), set(atlaspatch.UNAVAILABLE)
    assert aliases | refused == set(ATLASPATCH) and not aliases & refused
    assert len(aliases) == 59 and len(refused) == 7
    for name in sorted(aliases):
        spec = registry.get_spec(atlaspatch.ALIASES[name])
        assert spec.dim == DIFFERENT.get(name, ATLASPATCH[name]), name
    atlaspatch.check_names(sorted(aliases))  # every one accepted, before any weights load
    for name in sorted(refused):
        with pytest.raises(InvalidArgumentError) as info:
            atlaspatch.check_names(["uni_v1", name])
        msg = str(info.value)
        assert f"{name} not available" in msg and atlaspatch.UNAVAILABLE[name] in msg


def test_the_readme_minimal_run_names_now_resolve_and_keep_their_file_name():
    atlaspatch.check_names(["uni_v1", "dinov2_small", "openmidnight"])
    ext = atlaspatch.build_extractor("dinov2_small", device="meta", pretrained=False)
    assert ext.name == "dinov2_small" and ext.num_features == 384


@pytest.mark.parametrize("name", NEW)
def test_new_backbones_build_with_the_documented_dimension(name):
    """Meta device: the architecture's own output size (no weights, no memory)."""
    ext = sf.build_feature_extractor(atlaspatch.ALIASES[name], device="meta", pretrained=False)
    assert ext.num_features == ATLASPATCH[name]


# name: (input_px, resize_px, center_crop, interpolation, (mean, std), hub repo or file)
PREPROCESS = {
    "convnext_small_imagenet": (224, 230, 224, "bilinear", IMAGENET,
                                "convnext_small-0c510722.pth"),
    "convnext_large_imagenet": (224, 232, 224, "bilinear", IMAGENET,
                                "convnext_large-ea097f82.pth"),
    "vit_b_16_imagenet": (224, 256, 224, "bilinear", IMAGENET, "vit_b_16-c867db91.pth"),
    "vit_l_16_imagenet": (224, 242, 224, "bilinear", IMAGENET, "vit_l_16-852ce7e3.pth"),
    "vit_h_14_swag": (518, 518, 518, "bicubic", IMAGENET, "vit_h_14_swag-80465313.pth"),
    "resnet152_imagenet": (224, None, None, "bilinear", IMAGENET, "resnet152-394f9c45.pth"),
    "dinov2_vits14": (224, 256, 224, "bicubic", IMAGENET,
                      "timm/vit_small_patch14_dinov2.lvd142m"),
    "dinov2_vitg14": (224, 256, 224, "bicubic", IMAGENET,
                      "timm/vit_giant_patch14_dinov2.lvd142m"),
    "dinov3_vits16": (224, None, None, "bilinear", IMAGENET,
                      "timm/vit_small_patch16_dinov3.lvd1689m"),
    "dinov3_vit7b16_sat": (224, None, None, "bilinear", SAT, "timm/vit_7b_patch16_dinov3.sat493m"),
    "clip_rn50x4": (288, 288, 288, "bicubic", CLIP, "timm/resnet50x4_clip.openai"),
    "clip_vit_l_14_336": (336, 336, 336, "bicubic", CLIP,
                          "timm/vit_large_patch14_clip_336.openai"),
    "openmidnight": (224, None, None, "bilinear", IMAGENET, "SophontAI/OpenMidnight"),
}


@pytest.mark.parametrize("name", sorted(PREPROCESS))
def test_preprocessing_and_weight_sources(name):
    spec = registry.get_spec(name)
    px, resize, crop, interp, (mean, std), source = PREPROCESS[name]
    assert (spec.input_px, spec.resize_px, spec.center_crop, spec.interpolation) == (
        px, resize, crop, interp)
    assert spec.mean == pytest.approx(mean) and spec.std == pytest.approx(std)
    assert source in (spec.weights.path or spec.weights.repo_id)
    assert spec.reference and spec.citation.startswith("@") and spec.license


def test_dinov3_and_gated_licences_are_stated():
    for name in ("dinov3_vits16", "dinov3_vit7b16_sat"):
        spec = registry.get_spec(name)
        assert spec.gated and "DINOv3 License" in spec.license
    assert "CC-BY-NC" in registry.get_spec("vit_h_14_swag").license
    assert registry.get_spec("clip_vit_b_16").license.startswith("MIT")


# ---------------------------------------------------------------------------- numerics
TILES = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)


def _by_hand(tiles: np.ndarray, resize: int | None, crop: int, mode: str, mean, std):
    """Resize (antialiased, back to uint8 levels as PIL does), center crop, normalise."""
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
    size = crop if resize is None else resize
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode=mode, antialias=True,
                          align_corners=False).round().clamp(0, 255)
    off = (x.shape[-1] - crop) // 2
    x = x[..., off:off + crop, off:off + crop] / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_torchvision_vit_official_layout_gives_the_class_token(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.vit_b_32(weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "vit_b_32.pth")  # with heads.head.*
    ext = sf.build_feature_extractor("vit_b_32_imagenet", weights=str(tmp_path / "vit_b_32.pth"),
                                     device="cpu")
    ref.heads = torch.nn.Identity()
    with torch.no_grad():
        want = ref(_by_hand(TILES, 256, 224, "bilinear", *IMAGENET)).numpy()
    got = ext(TILES)
    assert got.shape == (2, 768) and np.abs(got - want).max() < 1e-4


def test_torchvision_convnext_feature_is_the_pooled_map_before_the_classifier(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.convnext_small(weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "cs.pth")
    ext = sf.build_feature_extractor("convnext_small_imagenet", weights=str(tmp_path / "cs.pth"),
                                     device="cpu")
    with torch.no_grad():
        x = _by_hand(TILES, 230, 224, "bilinear", *IMAGENET)
        want = ref.avgpool(ref.features(x)).flatten(1).numpy()  # AtlasPatch: classifier = id
    got = ext(TILES)
    assert got.shape == (2, 768) and np.abs(got - want).max() < 1e-3


def test_openai_clip_keeps_the_image_projection(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch32_clip_quickgelu_224", pretrained=False,
                            num_classes=512).eval()
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    ext = sf.build_feature_extractor("clip_vit_b_32", device="cpu",
                                     weights=str(tmp_path / "model.safetensors"))
    with torch.no_grad():
        want = ref(_by_hand(TILES, 224, 224, "bicubic", *CLIP)).numpy()
    got = ext(TILES)
    assert got.shape == (2, 512) and np.abs(got - want).max() < 1e-4
    assert ref.head.weight.shape == (512, 768)  # the projection: 768-d token -> 512


def test_dinov3_feature_is_the_normalised_class_token():
    ext = sf.build_feature_extractor("dinov3_vits16", device="cpu", pretrained=False)
    net = ext.model.net if hasattr(ext.model, "net") else ext.model
    with torch.no_grad():
        want = net.forward_features(_by_hand(TILES, None, 224, "bilinear", *IMAGENET))[:, 0]
    got = ext(TILES)
    assert got.shape == (2, 384) and np.abs(got - want.numpy()).max() < 1e-4


def test_openmidnight_position_grid_is_resampled_as_the_registers_hub_model():
    """dinov2_vitg14_reg resamples its 392 px grid (28 x 28) to 16 x 16 with antialiased
    bicubic by size (interpolate_offset 0); the class position folds into the class token."""
    from slideflow.model.extractors.families import dino_family

    spec = registry.get_spec("openmidnight").with_(
        build={"embed_dim": 48, "depth": 1, "heads": 2, "patch": 14, "regs": 4,
               "layerscale": 1e-5, "ffn": "swiglu", "pos_mode": "dinov2_reg"}, dim=48)
    built = dino_family.build(spec)
    torch.manual_seed(1)
    sd = {k: torch.randn(v.shape) for k, v in built.model.state_dict().items()
          if k not in ("pos_embed", "reg_token")}
    pos = torch.randn(1, 1 + 28 * 28, 48)
    sd.update(pos_embed=pos, register_tokens=torch.randn(1, 4, 48))
    out = built.convert(dict(sd))
    grid = pos[:, 1:].reshape(1, 28, 28, 48).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True,
                         align_corners=False).permute(0, 2, 3, 1).reshape(1, 256, 48)
    assert torch.allclose(out["pos_embed"], want, atol=1e-6)
    assert torch.allclose(out["cls_token"], sd["cls_token"] + pos[:, :1])
    built.model.load_state_dict(out, strict=True)


# ---------------------------------------------------------------------------- offline
@pytest.mark.parametrize("name,where", [
    ("dinov2_vits14", "huggingface.co/timm/vit_small_patch14_dinov2.lvd142m"),
    ("openmidnight", "huggingface.co/SophontAI/OpenMidnight"),
    ("clip_rn50", "huggingface.co/timm/resnet50_clip.openai"),
    ("dinov3_vit7b16", "huggingface.co/timm/vit_7b_patch16_dinov3.lvd1689m"),
])
def test_offline_hub_error_names_the_repo(name, where, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match=where.replace(".", r"\.")):
        sf.build_feature_extractor(name)


def test_offline_torchvision_error_names_the_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        sf.build_feature_extractor("vit_h_14_swag")
    msg = str(info.value)
    assert "vit_h_14_swag-80465313.pth" in msg
    assert "https://download.pytorch.org/models/vit_h_14_swag-80465313.pth" in msg


def test_dinov2_registers_timm_layout_matches_timm_at_224(tmp_path):
    """timm's reg4 checkpoint (37x37 grid, registers outside it) loads strictly; the grid
    resampled once equals timm's own per-forward resampling (bicubic by size, antialias),
    the dinov2 registers hub rule."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0,
                            dynamic_img_size=True).eval()
    assert ref.pos_embed.shape == (1, 37 * 37, 384) and ref.reg_token.shape == (1, 4, 384)
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    ext = sf.build_feature_extractor("dinov2_vits14_reg", device="cpu",
                                     weights=str(tmp_path / "model.safetensors"))
    with torch.no_grad():
        want = ref.forward_features(_by_hand(TILES, 256, 224, "bicubic", *IMAGENET))[:, 0]
    got = ext(TILES)
    assert got.shape == (2, 384) and np.abs(got - want.numpy()).max() < 1e-4
