"""TITAN's slide encoder (the vision tower of MahmoodLab/TITAN), written here.

Facts from the model's Hugging Face code (``vision_transformer.py``, ``modeling_titan.py``,
``config.json`` vision_config): tile features (CONCH v1.5, 768-d, 512-px tiles at 20x) are
placed on a 2-D grid whose cell is ``(coords - coords.min()) // patch_size_level0``; empty
cells are dropped. An MLP patch embedding (Linear 768->768 + GELU), a class token, 6
pre-norm blocks (768-d, 12 heads, MLP x4, LayerNorm eps 1e-6, no layer scale), final norm.
Positions enter only as 2-D ALiBi: each head adds ``-slope_h * euclidean grid distance``
between tiles (slopes of Press et al. for 12 heads); the class token has no bias. The slide
embedding is the contrastive attentional pooler's single query (``attn_pool_contrastive``,
8 heads), without the final ``proj`` (``encode_slide_from_patch_features`` passes
``no_proj=True``). The checkpoint's text tower (``text_encoder.*``) is not built.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..spec import SlideEncoderSpec
from . import register_family
from .mil import options


def alibi_slopes(n: int) -> list[float]:
    """Press et al.'s head slopes (geometric; interleaved for non-powers of two)."""
    if math.log2(n).is_integer():
        p = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [p * p ** i for i in range(n)]
    base = 2 ** math.floor(math.log2(n))
    return alibi_slopes(base) + alibi_slopes(2 * base)[0::2][: n - base]


def feature_grid(features: torch.Tensor, coords: torch.Tensor, patch_size_level0: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid (C, W, H) with features summed per cell, occupied mask (W, H)); axis 0 is x."""
    cells = torch.div(coords - coords.min(dim=0).values, int(patch_size_level0),
                      rounding_mode="floor")
    cells = cells - cells.min(dim=0).values
    w, h = (int(v) + 1 for v in cells.max(dim=0).values)
    grid = torch.zeros((w * h, features.shape[-1]), device=features.device)
    grid.index_add_(0, cells[:, 0] * h + cells[:, 1], features.float())
    grid = grid.view(w, h, -1).permute(2, 0, 1)
    return grid, torch.any(grid != 0, dim=0)


def alibi_bias(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """(heads, n+1, n+1) additive bias for the occupied cells of `mask` (W, H), x-major."""
    xs, ys = np.meshgrid(np.arange(mask.shape[0]), np.arange(mask.shape[1]), indexing="ij")
    keep = mask.cpu().numpy()
    pts = np.stack([xs[keep], ys[keep]], axis=1).astype(np.float64)
    dist = torch.tensor(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)), dtype=torch.float32)
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float32).view(heads, 1, 1)
    n = dist.shape[0]
    out = torch.zeros(heads, n + 1, n + 1)
    out[:, 1:, 1:] = -dist * slopes
    return out


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class _Blocks(nn.Module):  # the checkpoint names blocks 'blocks.modules_list.<i>'
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.modules_list = nn.ModuleList(blocks)


class AttentionalPooler(nn.Module):
    def __init__(self, dim: int, heads: int, queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(queries, dim))
        self.attn = nn.MultiheadAttention(dim, heads, kdim=dim, vdim=dim)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.ln_k(x).permute(1, 0, 2)                      # (L, B, D)
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, kv.shape[1], -1)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return out.permute(1, 0, 2)                              # (B, Q, D)


class TitanVision(nn.Module):
    def __init__(self, in_dim: int = 768, dim: int = 768, depth: int = 6, heads: int = 12,
                 mlp_ratio: float = 4.0, pool_heads: int = 8, pool_queries: int = 128):
        super().__init__()
        self.num_heads = heads
        self.patch_embed = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = _Blocks([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn_pool = AttentionalPooler(dim, pool_heads, pool_queries)  # captioning only
        self.attn_pool_contrastive = AttentionalPooler(dim, pool_heads, 1)
        self.proj = nn.Parameter(torch.zeros(dim, dim))            # zero-shot projection

    def forward(self, features: torch.Tensor, coords: torch.Tensor,
                patch_size_level0: int) -> torch.Tensor:
        grid, mask = feature_grid(features, coords, patch_size_level0)
        x = self.patch_embed(grid.flatten(1).transpose(0, 1))[mask.reshape(-1)]
        x = torch.cat([self.cls_token[0], x], dim=0).unsqueeze(0)
        bias = alibi_bias(mask, self.num_heads).to(x.device).unsqueeze(0)
        for block in self.blocks.modules_list:
            x = block(x, bias)
        return self.attn_pool_contrastive(self.norm(x))[0, 0]


class TitanSlide(nn.Module):
    """Holds the vision tower under the checkpoint's ``vision_encoder.`` prefix."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        self.vision_encoder = TitanVision(**kwargs)

    def forward(self, features, coords, patch_size_level0) -> torch.Tensor:
        if patch_size_level0 is None:
            raise ValueError("titan needs patch_size_level0 (the tile extent in level-0 "
                             "pixels) to place tiles on its grid")
        return self.vision_encoder(features, coords, patch_size_level0)


TITAN_OPTIONS = ("in_dim", "dim", "depth", "heads", "mlp_ratio", "pool_heads", "pool_queries")


@register_family("titan")
def build_titan(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    return TitanSlide(**options(spec, kwargs, TITAN_OPTIONS))
