"""Vision transformers from self-supervised checkpoints, rebuilt as timm ``VisionTransformer``.

- `build_vit`: DINO-style ViT tiny/small/base (Slideflow 3's ``vit``); keys are timm's.
- `build_dinov2`: a ViT trained with facebookresearch/dinov2, described by its training YAML
  (``student.arch``, ``patch_size``, ``layerscale``, ``ffn_layer``, ``num_register_tokens``,
  ``crops.global_crops_size``) and loaded from the teacher checkpoint. Conversions (all
  deliberate): chunked blocks ``blocks.<chunk>.<i>.`` -> ``blocks.<i>.``; SwiGLU ``w12``/``w3``
  -> ``fc1``/``fc2``; ``register_tokens`` -> ``reg_token`` with the class position embedding
  folded into the class token (timm adds position embeddings to patches only when registers
  are present, which is the same computation).
- `build_hf_vit`: Hugging Face ``transformers`` ViT / DINOv2 checkpoints (Phikon, Phikon-v2)
  converted to timm keys (separate q/k/v projections concatenated into ``qkv``).

The feature is the normalised class token unless ``spec.build['output']`` says otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from ....errors import WeightsError
from ..base import Built
from ..spec import ExtractorSpec
from . import register_family
from .timm_family import ClsMeanFeatures, resolve_layer

SIZES = {  # name -> (embed_dim, depth, heads)
    "vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16), "vit_giant2": (1536, 40, 24),
}


def _vit(**kw: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**kw)


# ---------------------------------------------------------------------------- DINO ViT
@register_family("vit")
def build_vit(spec: ExtractorSpec, size: str | None = None, patch_size: int | None = None,
              img_size: int | None = None) -> Built:
    size = size or spec.build.get("size", "small")
    key = size if size.startswith("vit_") else f"vit_{size}"
    if key not in ("vit_tiny", "vit_small", "vit_base"):
        raise ValueError(f"{spec.name}: size must be 'tiny', 'small' or 'base', not {size!r}")
    dim, depth, heads = SIZES[key]
    patch = int(patch_size or spec.build.get("patch_size", 16))
    img = int(img_size or spec.input_px)
    net = _vit(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
               mlp_ratio=4.0, qkv_bias=True, num_classes=0, global_pool="token",
               dynamic_img_size=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    config = {"size": key[4:], "patch_size": patch}
    if img_size:
        config["img_size"] = img
    return Built(model=net, layers_root=net, info={
        "spec": spec.with_(dim=dim, input_px=img), "config": config})


# ---------------------------------------------------------------------------- DINOv2
def _load_config(config: str | os.PathLike | Mapping | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    import yaml

    with open(config) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, Mapping):
        raise ValueError(f"{config}: not a YAML mapping")
    return dict(data)


def dinov2_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture options from a dinov2 training config (defaults: ssl_default_config)."""
    student = dict(config.get("student", {}))
    crops = dict(config.get("crops", {}))
    arch = student.get("arch", "vit_large")
    if arch not in SIZES:
        raise ValueError(f"dinov2 config: unknown student.arch {arch!r}")
    ffn = student.get("ffn_layer", "mlp")
    if ffn not in ("mlp", "swiglu", "swiglufused"):
        raise ValueError(f"dinov2 config: unsupported student.ffn_layer {ffn!r}")
    for flag in ("qkv_bias", "proj_bias", "ffn_bias"):
        if not student.get(flag, True):
            raise ValueError(f"dinov2 config: student.{flag}=False is not supported")
    return {
        "arch": arch, "patch_size": int(student.get("patch_size", 16)),
        "img_size": int(crops.get("global_crops_size", 224)),
        "layerscale": student.get("layerscale", 1e-5), "ffn_layer": ffn,
        "num_register_tokens": int(student.get("num_register_tokens", 0) or 0),
    }


@register_family("dinov2")
def build_dinov2(spec: ExtractorSpec, config: str | os.PathLike | Mapping | None = None,
                 **overrides: Any) -> Built:
    opts = dinov2_options(_load_config(config))
    unknown = set(overrides) - set(opts)
    if unknown:
        raise TypeError(f"{spec.name}: unknown options {sorted(unknown)}")
    opts.update(overrides)
    dim, depth, heads = SIZES[opts["arch"]]
    regs = int(opts["num_register_tokens"])
    kw: dict[str, Any] = dict(
        img_size=int(opts["img_size"]), patch_size=int(opts["patch_size"]), embed_dim=dim,
        depth=depth, num_heads=heads, qkv_bias=True, num_classes=0, global_pool="token",
        init_values=opts["layerscale"] or None, reg_tokens=regs, no_embed_class=regs > 0,
        dynamic_img_size=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    if opts["ffn_layer"] == "mlp":
        kw["mlp_ratio"] = 4.0
    else:
        hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8  # dinov2 SwiGLUFFNFused width
        kw["mlp_ratio"] = (2 * hidden + 0.5) / dim  # fc1 packs both halves
        kw["mlp_layer"] = resolve_layer("swiglu_packed")
        kw["act_layer"] = resolve_layer("silu")
    net = _vit(**kw)
    config_out: dict[str, Any] = dict(overrides)
    if config is not None:
        config_out["config"] = (os.path.abspath(os.fspath(config))
                                if not isinstance(config, Mapping) else dict(config))
    return Built(model=net, layers_root=net, convert=lambda sd: convert_dinov2(sd, regs),
                 info={"spec": spec.with_(dim=dim, input_px=int(opts["img_size"])),
                       "config": config_out})


_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")


def convert_dinov2(sd: dict[str, torch.Tensor], num_registers: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _CHUNKED.match(k)
        if m:
            k = f"blocks.{m.group(1)}.{m.group(2)}"
        k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        if k == "register_tokens":
            k = "reg_token"
        out[k] = v
    if num_registers and "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


# ---------------------------------------------------------------------------- HF transformers
@register_family("hf_vit")
def build_hf_vit(spec: ExtractorSpec, img_size: int | None = None) -> Built:
    b = dict(spec.build)
    img = int(img_size or b.get("img_size", spec.input_px))
    kw: dict[str, Any] = dict(
        img_size=img, patch_size=int(b["patch_size"]), embed_dim=int(b["embed_dim"]),
        depth=int(b["depth"]), num_heads=int(b["num_heads"]), mlp_ratio=4.0, qkv_bias=True,
        num_classes=0, global_pool="token", dynamic_img_size=True,
        init_values=b.get("init_values"), norm_layer=partial(nn.LayerNorm,
                                                             eps=float(b.get("ln_eps", 1e-6))))
    net = _vit(**kw)
    features: nn.Module | None = ClsMeanFeatures(net) if b.get("output") == "cls_mean" else None
    config = {"img_size": img} if img_size else {}
    return Built(model=net, features=features, layers_root=net,
                 convert=lambda sd: convert_hf_vit(sd, int(b["depth"])),
                 info={"spec": spec.with_(input_px=img), "config": config})


_HF_LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "norm1": "norm1", "norm2": "norm2",
    "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2",  # Dinov2 SwiGLU
}


def convert_hf_vit(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """transformers ViTModel / Dinov2Model keys -> timm VisionTransformer keys.

    A state dict already in timm's key space (e.g. an iBOT/DINO checkpoint) passes through.
    """
    if not any("encoder.layer." in k for k in sd):
        return sd
    src = dict(sd)
    for prefix in ("vit.", "dinov2.", "model."):  # a model-class prefix, if every layer has it
        if all(k.startswith(prefix) for k in src if "encoder.layer." in k):
            src = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in src.items()}
            break
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise WeightsError(f"Hugging Face ViT checkpoint lacks {key!r}")
        used.add(key)
        return src[key]

    out["cls_token"] = take("embeddings.cls_token")
    out["pos_embed"] = take("embeddings.position_embeddings")
    out["patch_embed.proj.weight"] = take("embeddings.patch_embeddings.projection.weight")
    out["patch_embed.proj.bias"] = take("embeddings.patch_embeddings.projection.bias")
    for i in range(depth):
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [take(f"{p}attention.attention.{n}.{kind}") for n in ("query", "key", "value")])
        for hf_name, timm_name in _HF_LAYER.items():
            for kind in ("weight", "bias", ""):
                key = f"{p}{hf_name}.{kind}" if kind else f"{p}{hf_name}"
                if key in src and key not in used:
                    out[f"blocks.{i}.{timm_name}.{kind}" if kind else
                        f"blocks.{i}.{timm_name}"] = take(key)
    for kind in ("weight", "bias"):
        out[f"norm.{kind}"] = take(f"layernorm.{kind}")
    for k, v in src.items():  # leftovers: reported by the strict check (or expected)
        if k not in used:
            out[k] = v
    return out
