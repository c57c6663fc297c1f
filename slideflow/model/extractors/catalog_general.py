"""General-purpose backbones of the core catalog: torchvision ImageNet ConvNeXts and ViTs,
Meta's DINOv2 and DINOv3, OpenAI CLIP image towers, and OpenMidnight (a DINOv2 ViT-g/14).

These are the natural-image models other tools offer next to the pathology encoders (every
AtlasPatch backbone name resolves to one of them, `slideflow.compat.atlaspatch.ALIASES`).
Plain data only, like `.catalog` (no torch import). Each spec names where its facts come from
(``reference``); licences are the weights' own and are stated per spec.
"""

from __future__ import annotations

from .spec import IMAGENET_MEAN, IMAGENET_STD, ExtractorSpec, WeightsSource, hf

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SAT_MEAN, _SAT_STD = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)
_DINO_KEYS = ("embeddings.mask_token", "mask_token")

CONVNEXT_CITATION = ("@inproceedings{liu2022convnext, title={A ConvNet for the 2020s}, author={Liu, Zhuang "
             "and Mao, Hanzi and Wu, Chao-Yuan and Feichtenhofer, Christoph and Darrell, Trevor "
             "and Xie, Saining}, booktitle={IEEE/CVF Conference on Computer Vision and Pattern "
             "Recognition (CVPR)}, pages={11976--11986}, year={2022}}")
VIT_CITATION = ("@inproceedings{dosovitskiy2021vit, title={An Image is Worth 16x16 Words: Transformers for "
        "Image Recognition at Scale}, author={Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, "
        "Alexander and others}, booktitle={International Conference on Learning Representations "
        "(ICLR)}, year={2021}}")
_SWAG = ("@inproceedings{singh2022swag, title={Revisiting Weakly Supervised Pre-Training of "
         "Visual Perception Models}, author={Singh, Mannat and Gustafson, Laura and Adcock, Aaron "
         "and others}, booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition "
         "(CVPR)}, year={2022}}")
_DINOV2 = ("@article{oquab2024dinov2, title={DINOv2: Learning Robust Visual Features without "
           "Supervision}, author={Oquab, Maxime and Darcet, Timoth{\\'e}e and Moutakanni, "
           "Th{\\'e}o and others}, journal={Transactions on Machine Learning Research}, "
           "year={2024}}")
_REGISTERS = ("\n@inproceedings{darcet2024registers, title={Vision Transformers Need "
              "Registers}, author={Darcet, Timoth{\\'e}e and Oquab, Maxime and Mairal, Julien "
              "and Bojanowski, Piotr}, booktitle={International Conference on Learning "
              "Representations (ICLR)}, year={2024}}")
_DINOV3 = ("@article{simeoni2025dinov3, title={DINOv3}, author={Sim{\\'e}oni, Oriane and Vo, "
           "Huy V. and Seitzer, Maximilian and others}, journal={arXiv preprint "
           "arXiv:2508.10104}, year={2025}}")
_CLIP = ("@inproceedings{radford2021clip, title={Learning Transferable Visual Models From Natural "
         "Language Supervision}, author={Radford, Alec and Kim, Jong Wook and Hallacy, Chris and "
         "others}, booktitle={Proceedings of the 38th International Conference on Machine "
         "Learning}, pages={8748--8763}, year={2021}}")
_OPENMIDNIGHT = ("@misc{sophont2025openmidnight, title={How to Train a State-of-the-Art "
                 "Pathology Foundation Model with \\$1.6k}, author={{Sophont AI}}, year={2025}, "
                 "url={https://sophontai.com/blog/openmidnight}}")

# torchvision IMAGENET1K_V1 weights (IMAGENET1K_SWAG_E2E_V1 for ViT-H/14, which has no V1):
# arch -> (dim, checkpoint file, resize, crop, interpolation, constructor kwargs)
_TV = {
    "convnext_small": (768, "convnext_small-0c510722.pth", 230, 224, "bilinear", {}),
    "convnext_base": (1024, "convnext_base-6075fbad.pth", 232, 224, "bilinear", {}),
    "convnext_large": (1536, "convnext_large-ea097f82.pth", 232, 224, "bilinear", {}),
    "vit_b_16": (768, "vit_b_16-c867db91.pth", 256, 224, "bilinear", {}),
    "vit_b_32": (768, "vit_b_32-d86f8d99.pth", 256, 224, "bilinear", {}),
    "vit_l_16": (1024, "vit_l_16-852ce7e3.pth", 242, 224, "bilinear", {}),
    "vit_l_32": (1024, "vit_l_32-c7638314.pth", 256, 224, "bilinear", {}),
    "vit_h_14": (1280, "vit_h_14_swag-80465313.pth", 518, 518, "bicubic", {"image_size": 518}),
}


def torchvision_spec(arch: str) -> ExtractorSpec:
    """The spec of torchvision's `arch` (a key of _TV) with its ImageNet (or SWAG) weights."""
    dim, ckpt, resize, crop, interp, kwargs = _TV[arch]
    vit = arch.startswith("vit")
    swag = arch == "vit_h_14"
    return ExtractorSpec(
        name=f"{arch}_{'swag' if swag else 'imagenet'}", family="torchvision", dim=dim,
        input_px=crop, resize_px=resize, center_crop=crop, interpolation=interp,
        license="CC-BY-NC-4.0 (SWAG weights)" if swag else "BSD-3-Clause (torchvision weights)",
        citation=(VIT_CITATION + "\n" + _SWAG if swag else VIT_CITATION) if vit else CONVNEXT_CITATION, cnn=not vit,
        build={"arch": arch, "kwargs": kwargs, "meta_init": True},
        weights=WeightsSource("torch_hub", path=ckpt,
                              url=f"https://download.pytorch.org/models/{ckpt}"),
        expected_unexpected=("heads.*",) if vit else ("classifier.*",),
        description=f"torchvision {arch} "
                    f"({'IMAGENET1K_SWAG_E2E_V1' if swag else 'IMAGENET1K_V1'}), "
                    f"{dim}-d {'class token' if vit else 'pooled features'} (classifier "
                    "replaced by an identity)",
        reference=f"torchvision.models.{arch} weights enum: file, transforms() resize "
                  f"{resize} / crop {crop} {interp}, ImageNet mean/std",
    )


def _dinov2(size: str, dim: int, depth: int, heads: int, ffn: str, alias: str = "",
            reg: bool = False) -> ExtractorSpec:
    arch = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    tag = "_reg4" if reg else ""
    return ExtractorSpec(
        name=f"dinov2_vit{size}14{'_reg' if reg else ''}", family="dino", dim=dim,
        input_px=224, license="Apache-2.0", citation=_DINOV2 + (_REGISTERS if reg else ""),
        aliases=(alias,) if alias else (), resize_px=256, center_crop=224,
        interpolation="bicubic",
        build={"embed_dim": dim, "depth": depth, "heads": heads, "patch": 14,
               "regs": 4 if reg else 0, "layerscale": 1e-5, "ffn": ffn,
               "pos_mode": "dinov2_reg" if reg else "dinov2", "meta_init": True},
        weights=hf(f"timm/vit_{arch}_patch14{tag}_dinov2.lvd142m"),
        expected_unexpected=_DINO_KEYS,
        description=f"Meta DINOv2 ViT-{size.upper()}/14{' with 4 registers' if reg else ''} "
                    f"(LVD-142M), {dim}-d class token after the final norm; also loads "
                    f"facebook/dinov2{'-with-registers' if reg else ''}-{arch} (transformers "
                    f"layout) and dinov2_vit{size}14{tag}_pretrain.pth",
        reference="facebookresearch/dinov2 hubconf (vit_small/base/large/giant2, swiglufused "
                  "for giant; registers: interpolate_antialias, offset 0) and "
                  "make_classification_eval_transform (Resize(256, bicubic), CenterCrop(224), "
                  "ImageNet), as dinov2_vitl14",
    )


# name -> (timm architecture, dim, pretrained tag)
_DINOV3_ARCHS = {
    "dinov3_vits16": ("vit_small_patch16_dinov3", 384, "lvd1689m"),
    "dinov3_vits16_plus": ("vit_small_plus_patch16_dinov3", 384, "lvd1689m"),
    "dinov3_vitb16": ("vit_base_patch16_dinov3", 768, "lvd1689m"),
    "dinov3_vitl16": ("vit_large_patch16_dinov3", 1024, "lvd1689m"),
    "dinov3_vitl16_sat": ("vit_large_patch16_dinov3", 1024, "sat493m"),
    "dinov3_vith16_plus": ("vit_huge_plus_patch16_dinov3", 1280, "lvd1689m"),
    "dinov3_vit7b16": ("vit_7b_patch16_dinov3", 4096, "lvd1689m"),
    "dinov3_vit7b16_sat": ("vit_7b_patch16_dinov3", 4096, "sat493m"),
}


def _dinov3(name: str) -> ExtractorSpec:
    arch, dim, tag = _DINOV3_ARCHS[name]
    sat = tag == "sat493m"
    facebook = (f"facebook/dinov3-{name.split('_')[1]}{'plus' if 'plus' in name else ''}"
                f"-pretrain-{tag}")
    return ExtractorSpec(
        name=name, family="timm", dim=dim, input_px=224, interpolation="bilinear",
        mean=_SAT_MEAN if sat else IMAGENET_MEAN, std=_SAT_STD if sat else IMAGENET_STD,
        license="DINOv3 License (Meta; gated: accept it on the Hub)", citation=_DINOV3,
        gated=True,
        build={"timm": arch, "kwargs": {"img_size": 224}, "output": "cls", "meta_init": True},
        weights=hf(f"timm/{arch}.{tag}"),
        description=f"Meta DINOv3 {arch.split('_patch')[0]}/16 ({tag.upper()}), {dim}-d "
                    f"class token after the final norm (the pooler_output of {facebook})",
        reference=f"timm pretrained_cfg '{arch}.{tag}' (mean/std, dinov3-license); "
                  "transformers DINOv3ViTImageProcessorFast defaults (224 x 224 bilinear); "
                  "AtlasPatch models/patch/dinov3.py (pooler_output)",
    )


# name -> (timm architecture, projection dim, input px, hub repo)
_OPENAI_CLIP = {
    "clip_rn50": ("resnet50_clip", 1024, 224, "resnet50_clip.openai"),
    "clip_rn101": ("resnet101_clip", 512, 224, "resnet101_clip.openai"),
    "clip_rn50x4": ("resnet50x4_clip", 640, 288, "resnet50x4_clip.openai"),
    "clip_rn50x16": ("resnet50x16_clip", 768, 384, "resnet50x16_clip.openai"),
    "clip_rn50x64": ("resnet50x64_clip", 1024, 448, "resnet50x64_clip.openai"),
    "clip_vit_b_32": ("vit_base_patch32_clip_quickgelu_224", 512, 224,
                      "vit_base_patch32_clip_224.openai"),
    "clip_vit_b_16": ("vit_base_patch16_clip_quickgelu_224", 512, 224,
                      "vit_base_patch16_clip_224.openai"),
    "clip_vit_l_14": ("vit_large_patch14_clip_quickgelu_224", 768, 224,
                      "vit_large_patch14_clip_224.openai"),
    "clip_vit_l_14_336": ("vit_large_patch14_clip_quickgelu_336", 768, 336,
                          "vit_large_patch14_clip_336.openai"),
}


def _clip(name: str) -> ExtractorSpec:
    arch, dim, px, repo = _OPENAI_CLIP[name]
    big = px > 224 or "large" in arch or "x" in name.removeprefix("clip_rn")
    return ExtractorSpec(
        name=name, family="timm", dim=dim, input_px=px, resize_px=px, center_crop=px,
        interpolation="bicubic", mean=_CLIP_MEAN, std=_CLIP_STD, cnn=arch.startswith("resnet"),
        license="MIT (OpenAI CLIP)", citation=_CLIP,
        build={"timm": arch, "kwargs": {"num_classes": dim}, "meta_init": big},
        weights=hf(f"timm/{repo}"),  # timm layout (the repo's open_clip_* files are not)
        description=f"OpenAI CLIP {name[5:].upper()} image tower, {dim}-d projected image "
                    "embedding (encode_image, not L2-normalised)",
        reference=f"timm pretrained_cfg '{repo}' (num_classes = projection dim, CLIP mean/std, "
                  "bicubic) and its quickgelu architecture; open_clip transform (Resize(px, "
                  "bicubic), CenterCrop(px)); AtlasPatch models/patch/clip.py (encode_image)",
    )


def specs() -> list[ExtractorSpec]:
    """The general-purpose specs (appended to `.catalog.specs`)."""
    return [
        # SWAG's weights are CC-BY-NC: vit_h_14_swag ships with slideflow_noncommercial
        *(torchvision_spec(arch) for arch in _TV if arch != "vit_h_14"),
        _dinov2("s", 384, 12, 6, "mlp", "dinov2_small"),
        _dinov2("b", 768, 12, 12, "mlp", "dinov2_base"),
        _dinov2("g", 1536, 40, 24, "swiglu", "dinov2_giant"),
        _dinov2("s", 384, 12, 6, "mlp", reg=True),
        _dinov2("b", 768, 12, 12, "mlp", reg=True),
        _dinov2("l", 1024, 24, 16, "mlp", reg=True),
        _dinov2("g", 1536, 40, 24, "swiglu", reg=True),
        *(_dinov3(name) for name in _DINOV3_ARCHS),
        *(_clip(name) for name in _OPENAI_CLIP),
        ExtractorSpec(
            name="openmidnight", family="dino", dim=1536, input_px=224,
            license="not stated in the sources checked: read huggingface.co/SophontAI/"
                    "OpenMidnight before use",
            citation=_OPENMIDNIGHT, interpolation="bilinear",
            build={"embed_dim": 1536, "depth": 40, "heads": 24, "patch": 14, "regs": 4,
                   "layerscale": 1e-5, "ffn": "swiglu", "pos_mode": "dinov2_reg",
                   "meta_init": True},
            weights=hf("SophontAI/OpenMidnight", "teacher_checkpoint_load.pt"),
            expected_unexpected=_DINO_KEYS,
            description="OpenMidnight (Sophont AI): DINOv2 ViT-g/14 with 4 registers "
                        "(dinov2_vitg14_reg), 1536-d class token; its 392 px position grid "
                        "is resampled to 224 px as the dinov2 hub model does",
            reference="AtlasPatch models/patch/openmidnight.py (dinov2_vitg14_reg, "
                      "teacher_checkpoint_load.pt, Resize((224, 224)), ImageNet mean/std); "
                      "facebookresearch/dinov2 hub backbones (registers: interpolate_antialias "
                      "True, offset 0)",
        ),
    ]
