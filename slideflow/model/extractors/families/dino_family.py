"""DINOv2-style pathology ViTs released in other key layouts (Hibou, Midnight, GPFM, Kaiko
ViT-L/14, the Meta DINOv2 ViT-L/14), rebuilt as timm ``VisionTransformer``.

``spec.build``:
  ``embed_dim``, ``depth``, ``heads``, ``patch``  the ViT size
  ``regs``        register tokens (0 = none)
  ``layerscale``  LayerScale init (None = no LayerScale)
  ``ffn``         'mlp' (4x GELU) or 'swiglu' (DINOv2's fused SwiGLU width)
  ``native_px``   image size the model is built for (its position-embedding grid);
                  defaults to ``input_px``
  ``pos_mode``    how a checkpoint whose position grid differs from the model's is resampled,
                  once, at load time, exactly as the authors' code does at every forward pass:
                  'hf' (transformers Dinov2: bicubic to the target size, no antialias),
                  'dinov2' (facebookresearch/dinov2 hub models: bicubic with
                  scale_factor (grid + 0.1) / old_grid, no antialias), 'dinov2_reg'
                  (facebookresearch/dinov2 hub models with registers: bicubic to the target
                  size with antialias, offset 0). Loading a checkpoint
                  whose grid already matches changes nothing (so saved state dicts reload).
  ``output``      'cls' (default: class token after the final norm) or 'cls_mean' (class
                  token concatenated with the mean of the patch tokens, registers excluded);
                  overridable with ``build_feature_extractor(..., output=...)``.

Accepted checkpoint layouts (detected per file): timm, facebookresearch/dinov2 (``blocks.N``,
chunked ``blocks.C.N``, ``mlp.w12``/``w3``, ``register_tokens``, class position included in
``pos_embed``) and Hugging Face transformers Dinov2 / Dinov2WithRegisters (``embeddings.*``,
``encoder.layer.N.*``, ``mlp.weights_in``/``weights_out``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import WeightsError
from ..base import Built
from ..spec import ExtractorSpec
from . import register_family
from .timm_family import ClsMeanFeatures, resolve_layer
from .vit_family import convert_dinov2, convert_hf_vit

OUTPUTS = ("cls", "cls_mean")
POS_MODES = ("hf", "dinov2", "dinov2_reg")


def swiglu_ratio(dim: int) -> float:
    """timm ``mlp_ratio`` giving DINOv2's fused SwiGLU width (fc1 packs both halves)."""
    hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8
    return (2 * hidden + 0.5) / dim


@register_family("dino")
def build(spec: ExtractorSpec, output: str | None = None) -> Built:
    from timm.models.vision_transformer import VisionTransformer

    b = dict(spec.build)
    output = output or b.get("output", "cls")
    if output not in OUTPUTS:
        raise ValueError(f"{spec.name}: output must be one of {OUTPUTS}, not {output!r}")
    dim, regs = int(b["embed_dim"]), int(b.get("regs", 0))
    kw: dict[str, Any] = dict(
        img_size=int(b.get("native_px", spec.input_px)), patch_size=int(b["patch"]),
        embed_dim=dim, depth=int(b["depth"]), num_heads=int(b["heads"]), qkv_bias=True,
        init_values=b.get("layerscale"), reg_tokens=regs, no_embed_class=regs > 0,
        num_classes=0, global_pool="token", dynamic_img_size=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6))
    if b.get("ffn", "mlp") == "swiglu":
        kw.update(mlp_ratio=swiglu_ratio(dim), mlp_layer=resolve_layer("swiglu_packed"),
                  act_layer=resolve_layer("silu"))
    net = VisionTransformer(**kw)
    grid = kw["img_size"] // kw["patch_size"]
    features = ClsMeanFeatures(net) if output == "cls_mean" else None
    out_dim = 2 * dim if output == "cls_mean" else dim
    info: dict[str, Any] = {"config": {"output": output} if output != b.get("output", "cls")
                            else {}}
    if out_dim != spec.dim:
        info["spec"] = spec.with_(dim=out_dim)
    mode = b.get("pos_mode", "hf")
    return Built(model=net, features=features, layers_root=net, info=info,
                 convert=lambda sd: convert(sd, regs=regs, grid=grid, mode=mode,
                                            depth=int(b["depth"])))


def convert(sd: dict[str, torch.Tensor], *, regs: int, grid: int, mode: str,
            depth: int) -> dict[str, torch.Tensor]:
    """Any accepted layout -> timm keys, registers folded, position grid = model grid."""
    hf = any(k.startswith(("encoder.layer.", "embeddings.")) for k in sd)
    if hf:
        sd = dict(sd)
        if "embeddings.register_tokens" in sd:
            sd["register_tokens"] = sd.pop("embeddings.register_tokens")
        sd = convert_hf_vit(sd, depth)
    sd = convert_dinov2(sd, num_registers=0)  # key renames only; registers handled below
    pos = sd.get("pos_embed")
    if pos is None:
        return sd
    n = pos.shape[1]
    with_cls = _square(n - 1) and not _square(n)
    if regs and with_cls:  # fold the class position into the class token (timm layout)
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
        pos, with_cls = pos[:, 1:], False
    sd["pos_embed"] = resample_grid(pos, grid, mode, with_cls)
    return sd


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def resample_grid(pos: torch.Tensor, grid: int, mode: str, with_cls: bool) -> torch.Tensor:
    """(1, [1+]g*g, C) position embeddings on a g x g grid -> grid x grid."""
    if mode not in POS_MODES:
        raise ValueError(f"pos_mode must be one of {POS_MODES}, not {mode!r}")
    head, patch = (pos[:, :1], pos[:, 1:]) if with_cls else (pos[:, :0], pos)
    old = math.isqrt(patch.shape[1])
    if old * old != patch.shape[1]:
        raise WeightsError(f"position embeddings of {patch.shape[1]} tokens are not a square "
                           "grid")
    if old == grid:
        return pos
    dtype, c = patch.dtype, patch.shape[-1]
    img = patch.reshape(1, old, old, c).permute(0, 3, 1, 2).float()
    if mode in ("hf", "dinov2_reg"):
        img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False,
                            antialias=mode == "dinov2_reg")
    else:
        scale = (grid + 0.1) / old
        img = F.interpolate(img, scale_factor=(scale, scale), mode="bicubic",
                            align_corners=False)
    if img.shape[-1] != grid:
        raise WeightsError(f"resampling a {old}x{old} position grid gave {img.shape[-1]}, "
                           f"expected {grid}")
    patch = img.permute(0, 2, 3, 1).reshape(1, grid * grid, c).to(dtype)
    return torch.cat([head, patch], dim=1)
