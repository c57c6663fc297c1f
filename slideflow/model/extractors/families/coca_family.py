"""CONCH image towers (CoCa vision towers): a ViT trunk, an attentional pooler with one query,
a LayerNorm, optionally the contrastive projection.

Written for slideflow from the published architecture descriptions; parameter names follow
the released checkpoints so they load strictly:

- ``conch`` (v1, mahmoodlab/CONCH ``conch_ViT-B-16``): keys ``visual.trunk.*`` (timm
  ViT-B/16 at 448 px), ``visual.attn_pool_contrast.{query, attn.*, ln_q, ln_k}`` (a
  ``torch.nn.MultiheadAttention`` with 512-d queries over 768-d tokens, 8 heads),
  ``visual.ln_contrast``, ``visual.proj_contrast`` (512 x 512). The text tower, the caption
  pooler and ``logit_scale`` are ignored.
- ``conch_v15`` (MahmoodLab/conchv1_5 ``pytorch_model_vision.bin``): keys ``trunk.*`` (ViT-L/16
  with LayerScale, position grid 14 x 14), ``attn_pool_contrast.{query, ln_q, ln_k, to_q,
  to_kv, to_out}`` (bias-free projections, 768-d query over 1024-d tokens, 8 heads),
  ``ln_contrast``. Its authors interpolate the 14 x 14 position grid at every forward pass
  with ``scale_factor=(n + 0.1) / 14`` (bicubic); `OffsetPosViT` does the same.

Feature (as TRIDENT and CLAM run CONCH: ``encode_image(proj_contrast=False,
normalize=False)``): ``ln_contrast(attn_pool_contrast(tokens)[:, 0])``; ``proj_contrast=True``
(v1 only) multiplies by the contrastive projection.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Built
from ..spec import ExtractorSpec
from . import register_family


def _offset_pos_vit():
    from timm.models.vision_transformer import VisionTransformer

    class OffsetPosViT(VisionTransformer):
        """timm ViT whose position grid is resized at runtime with the iBOT/DINO rule
        ``scale_factor = (n + 0.1) / grid`` (bicubic), as CONCH v1.5's code does."""

        def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, c = x.shape  # dynamic_img_size: patch tokens arrive NHWC
            pos = self.pos_embed
            grid = math.isqrt(pos.shape[1] - 1)
            if (h, w) != (grid, grid):
                patch = pos[:, 1:].reshape(1, grid, grid, c).permute(0, 3, 1, 2)
                patch = F.interpolate(patch, scale_factor=((h + 0.1) / grid, (w + 0.1) / grid),
                                      mode="bicubic", align_corners=False)
                patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, c)
                pos = torch.cat([pos[:, :1], patch], dim=1)
            x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
            return self.pos_drop(x + pos)

    return OffsetPosViT


class MHAPooler(nn.Module):
    """CONCH v1 attentional pooler (sequence-first ``nn.MultiheadAttention``)."""

    def __init__(self, d_model: int, context_dim: int, heads: int, queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, heads, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.ln_k(x).transpose(0, 1)                           # L, N, C
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[0], -1)
        return self.attn(q, kv, kv, need_weights=False)[0].transpose(0, 1)  # N, Q, D


class LinearPooler(nn.Module):
    """CONCH v1.5 attentional pooler (bias-free q / kv / out projections)."""

    def __init__(self, d_model: int, context_dim: int, heads: int, queries: int = 1):
        super().__init__()
        self.heads = heads
        self.scale = (d_model // heads) ** -0.5
        self.query = nn.Parameter(torch.randn(queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        q = self.to_q(self.ln_q(self.query))                        # Q, D
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)            # N, L, D each
        h = self.heads
        q = q.reshape(1, -1, h, q.shape[-1] // h).transpose(1, 2) * self.scale  # 1, h, Q, d
        k = k.reshape(n, length, h, -1).transpose(1, 2)            # N, h, L, d
        v = v.reshape(n, length, h, -1).transpose(1, 2)
        sim = q @ k.transpose(-1, -2)
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, -1, h * v.shape[-1])  # N, Q, D
        return self.to_out(out)


class CoCaVision(nn.Module):
    def __init__(self, trunk: nn.Module, pooler: nn.Module, dim: int, proj: bool,
                 use_proj: bool = False):
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = pooler
        self.ln_contrast = nn.LayerNorm(dim)
        self.use_proj = use_proj
        if proj:
            self.proj_contrast = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast if self.use_proj else pooled


@register_family("coca")
def build_conch(spec: ExtractorSpec, proj_contrast: bool = False) -> Built:
    from timm.models.vision_transformer import VisionTransformer

    trunk = VisionTransformer(img_size=448, patch_size=16, embed_dim=768, depth=12,
                              num_heads=12, mlp_ratio=4.0, num_classes=0,
                              dynamic_img_size=True)
    model = CoCaVision(trunk, MHAPooler(512, 768, 8), 512, proj=True,
                       use_proj=bool(proj_contrast))
    config = {"proj_contrast": True} if proj_contrast else {}
    return Built(model=model, layers_root=trunk, info={"config": config})


@register_family("coca_v15")
def build_conch_v15(spec: ExtractorSpec) -> Built:
    trunk = _offset_pos_vit()(img_size=224, patch_size=16, embed_dim=1024, depth=24,
                              num_heads=16, mlp_ratio=4.0, qkv_bias=True, init_values=1.0,
                              num_classes=0, dynamic_img_size=True)
    model = CoCaVision(trunk, LinearPooler(768, 1024, 8), 768, proj=False)
    return Built(model=model, layers_root=trunk, convert=convert_conch_v15)


def convert_conch_v15(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Position grid to 14 x 14 (bilinear, no antialias: timm's resample_abs_pos_embed), the
    authors' load-time step; a no-op for a checkpoint already on that grid."""
    pos = sd.get("trunk.pos_embed")
    if pos is not None and pos.shape[1] != 197:
        from timm.layers import resample_abs_pos_embed

        sd = dict(sd)
        sd["trunk.pos_embed"] = resample_abs_pos_embed(
            pos, new_size=(14, 14), num_prefix_tokens=1, interpolation="bilinear",
            antialias=False, verbose=False)
    return sd
