"""MOOZY (patient-level): a slide encoder plus a case transformer over slide embeddings.

Facts from AtlasAnalyticsLab/MOOZY (``moozy/models/moozy_slide_encoder.py``,
``case_transformer.py``, ``layers.py``, ``factory.py`` load_stage2_inference_model,
``serialization.py``, ``variants.py``, ``config/model.py`` defaults,
``data/features/grid.py`` + ``data/stage2/dataset.py`` (how a slide becomes tokens),
``encoding.py``, ``hf_hub.py``) and ``MODEL_CARD.md``:

- tiles: Lunit DINO ViT-S/8 features (384-d) of 224-px tiles at 20x.
- a slide: tiles snapped to a grid of step ``patch_size_level0`` (cells =
  round((xy - min) / step); more than 0.25 step off the grid is an error; a later tile in an
  occupied cell replaces the earlier; all-zero feature rows count as background and are
  dropped), tokens in row-major grid order.
- slide encoder ("base_half_depth", 4 registers, no qk-norm, no layer scale, fixed ALiBi):
  Linear(384, 768) + GELU, [class, 4 registers, tiles], 6 pre-norm blocks (768-d, 12 heads,
  MLP 3072 GELU), each adding to the attention logits ``-slope_h * euclidean distance in
  cells`` (Press slopes; zero for the class and register tokens), final LayerNorm; the slide
  embedding is the class token (768-d).
- case transformer ("base_quarter_depth", layer scale 1e-5, no registers): [case token,
  slide embeddings], 3 pre-norm blocks (12 heads, MLP 3072, LayerScale on both branches),
  final LayerNorm; the patient embedding is the case token (768-d).
- weights: ``moozy.pt`` in AtlasAnalyticsLab/MOOZY (not gated; CC-BY-NC-SA-4.0), a dict with
  ``teacher_slide_encoder`` and ``case_transformer`` state dicts plus their configs.
- not reproduced: the GPU-memory token cap of ``moozy encode`` (it subsamples slides with
  more tiles than a VRAM-dependent limit, 12,000 tokens at 16 GiB; no cap on CPU); here every
  tile is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..spec import SlideEncoderSpec
from . import register_family
from .mil import options
from .titan import alibi_slopes

GRID_TOLERANCE = 0.25


def grid_tokens(features: torch.Tensor, coords: torch.Tensor, step: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (T, D), cells (T, 2) as (col, row)) of the slide grid, row-major, background
    (all-zero rows) and overwritten duplicates removed."""
    c = coords.to(torch.float64)
    origin = c.min(dim=0).values
    cells = torch.round((c - origin) / step)
    off = (origin + cells * step - c).abs().max()
    if float(off) > GRID_TOLERANCE * step:
        raise ValueError(f"moozy: tile coordinates are {float(off):.1f} px off a grid of step "
                         f"{step:g} level-0 px (tolerance {GRID_TOLERANCE} step); pass the "
                         "tile extent as patch_size_level0")
    cells = cells.to(torch.int64)
    width = int(cells[:, 0].max()) + 1
    flat = cells[:, 1] * width + cells[:, 0]
    last = {int(f): i for i, f in enumerate(flat.tolist())}  # later tiles replace earlier
    order = torch.tensor([last[k] for k in sorted(last)], dtype=torch.int64,
                         device=features.device)
    keep = order[(features[order] != 0).any(dim=1)]
    return features[keep], cells[keep.to(cells.device)]


class ALiBi2D(nn.Module):
    def __init__(self, heads: int):
        super().__init__()
        self.register_buffer("slopes", -torch.tensor(alibi_slopes(heads)).unsqueeze(1))

    def bias(self, cells: torch.Tensor, prefix: int) -> torch.Tensor:
        """(1, H, N, N) for `prefix` position-free tokens followed by tiles at `cells`."""
        pos = torch.cat([cells.new_zeros(prefix, 2), cells]).to(self.slopes.dtype)
        dist = torch.cdist(pos, pos)
        out = self.slopes.view(-1, 1, 1) * dist
        out[:, :prefix, :] = 0.0
        out[:, :, :prefix] = 0.0
        return out.unsqueeze(0)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block with separate q/k/v projections (both MOOZY transformers)."""

    def __init__(self, dim: int, heads: int, hidden: int, layerscale: float = 0.0,
                 qk_norm: bool = False, alibi: ALiBi2D | None = None):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        if alibi is not None:
            self.pos_bias = alibi
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.ls_attn = LayerScale(dim, layerscale) if layerscale > 0 else nn.Identity()
        self.ls_mlp = LayerScale(dim, layerscale) if layerscale > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.q_norm(q), self.k_norm(k)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None
                                           else bias.to(q.dtype))
        x = x + self.ls_attn(self.out_proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.ls_mlp(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class MoozySlideEncoder(nn.Module):
    def __init__(self, feat_dim: int, dim: int, heads: int, depth: int, hidden: int,
                 registers: int, qk_norm: bool, layerscale: float):
        super().__init__()
        self.registers = registers
        self.input_proj = nn.Sequential(nn.Linear(feat_dim, dim), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # pretraining only
        self.pos_bias = ALiBi2D(heads)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, layerscale, qk_norm,
                                          self.pos_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(tokens).unsqueeze(0)
        prefix = [self.cls_token] + ([self.register_tokens] if self.registers else [])
        x = torch.cat(prefix + [x], dim=1)
        bias = self.pos_bias.bias(cells, 1 + self.registers)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)[0, 0]


class CaseAggregator(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int, hidden: int, layerscale: float,
                 qk_norm: bool):
        super().__init__()
        self.case_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, layerscale, qk_norm)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, slides: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.case_token[0], slides], dim=0).unsqueeze(0)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[0, 0]


class Moozy(nn.Module):
    """``slide_encoder.*`` + ``case_transformer.*``: the call embeds one slide; `aggregate`
    turns a patient's slide embeddings (S, 768) into the patient embedding."""

    def __init__(self, feat_dim: int = 384, dim: int = 768, heads: int = 12, depth: int = 6,
                 hidden: int = 3072, registers: int = 4, qk_norm: bool = False,
                 layerscale: float = 0.0, case_heads: int = 12, case_depth: int = 3,
                 case_hidden: int = 3072, case_layerscale: float = 1e-5,
                 case_qk_norm: bool = False):
        super().__init__()
        self.slide_encoder = MoozySlideEncoder(feat_dim, dim, heads, depth, hidden, registers,
                                               qk_norm, layerscale)
        self.case_transformer = CaseAggregator(dim, case_heads, case_depth, case_hidden,
                                               case_layerscale, case_qk_norm)

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None,
                patch_size_level0: int | None) -> torch.Tensor:
        if coords is None or patch_size_level0 is None:
            raise ValueError("moozy places tiles on a grid: pass coords (N, 2) level-0 px and "
                             "patch_size_level0")
        tokens, cells = grid_tokens(features, coords, float(patch_size_level0))
        if len(tokens) == 0:
            raise ValueError("moozy: every tile is background (all-zero features)")
        return self.slide_encoder(tokens, cells)

    def aggregate(self, slide_embeddings: torch.Tensor) -> torch.Tensor:
        return self.case_transformer(slide_embeddings)


MOOZY_OPTIONS = ("feat_dim", "dim", "heads", "depth", "hidden", "registers", "qk_norm",
                 "layerscale", "case_heads", "case_depth", "case_hidden", "case_layerscale",
                 "case_qk_norm")


@register_family("moozy")
def build_moozy(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    return Moozy(**options(spec, kwargs, MOOZY_OPTIONS))
