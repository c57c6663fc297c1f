"""Prov-GigaPath's slide encoder (``gigapath_slide_enc12l768d``), written here.

Facts from prov-gigapath/prov-gigapath ``gigapath/slide_encoder.py`` (LongNetViT,
``create_model``), ``gigapath/pos_embed.py``, ``gigapath/torchscale/model/LongNetConfig.py``
(``LongNet_12_layers_768_dim``) and ``gigapath/pipeline.py``:

- input: GigaPath tile features (1536-d) and level-0 top-left tile coordinates (x, y);
  ``patch_embed.proj`` Linear(1536, 768).
- positions: cell = floor(coords / tile_size) with tile_size 256 level-0 pixels (the released
  code's default; TRIDENT sets it to the tile extent, ``tile_size=None`` here), flat index
  ``cell_x * 1000 + cell_y`` into a fixed 2-D sin-cos table over a 1000 x 1000 grid (MAE's
  ``get_2d_sincos_pos_embed``): the first half of the channels encodes the column of that flat
  index (cell_y), the second half its row (cell_x), each as [sin, cos] of pos * 10000^(-k/192).
  The class token gets a zero position and is prepended.
- encoder: LongNet, 12 layers, 768-d, 16 heads, FFN 3072, dilated ratios [1, 2, 4, 8, 16],
  segment lengths from ``get_optimal_segment_length(262144, 256)`` = [1024, 5792, 32768,
  185363, 1048576] (see `longnet`). Tiles are attended in the order given (LongNet is not
  permutation invariant).
- output: ``norm`` (LayerNorm eps 1e-6) of the class token of the final encoder output
  (``create_model(...)`` default ``global_pool=False``, ``forward`` without
  ``all_layer_embed``) -> 768-d. ``global_pool=True`` averages the tile tokens instead;
  ``layer=k`` reads the hidden state after k layers (the reference's ``all_layer_embed``
  list, whose last entry skips the encoder's final layer_norm): TRIDENT uses
  ``global_pool=True, layer=11``; Slideflow 3's ``last_layer_embed`` is ``layer=12``.
- weights: ``slide_encoder.pth`` (checkpoint key ``model``) in the gated Hugging Face repo
  prov-gigapath/prov-gigapath. The sin-cos table is a non-persistent buffer there, rebuilt
  here from the formula (never stored as 1,000,001 x 768 floats).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..spec import SlideEncoderSpec
from . import register_family
from .longnet import LongNetEncoder, optimal_segment_lengths
from .mil import options


def grid_cells(coords: torch.Tensor, tile_size: int, ngrids: int) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """(row, column) of each tile in the reference's flat position table (see module doc)."""
    cells = torch.div(coords.to(torch.int64), int(tile_size), rounding_mode="floor")
    flat = cells[:, 0] * ngrids + cells[:, 1]
    if bool((cells < 0).any()) or bool((flat >= ngrids * ngrids).any()):
        worst = cells.max(dim=0).values.tolist()
        raise ValueError(f"gigapath_slide: tile coordinates reach cell {worst} (cells of "
                         f"{tile_size} level-0 px); the model's position table covers "
                         f"{ngrids} x {ngrids} cells, i.e. slides up to {ngrids * tile_size} "
                         "level-0 px; coordinates must be non-negative level-0 pixels")
    return torch.div(flat, ngrids, rounding_mode="floor"), flat % ngrids


def sincos_2d(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """MAE's 2-D sin-cos embedding of grid cells, (N, dim) float32 (computed in float64)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    omega = omega.to(rows.device)
    parts = []
    for pos in (cols, rows):
        angle = pos.to(torch.float64).unsqueeze(1) * omega
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1).float()


class _PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_chans, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class GigaPathSlideEncoder(nn.Module):
    """LongNetViT in the official key layout: ``patch_embed.proj``, ``cls_token``,
    ``encoder.layers.<i>...``, ``encoder.layer_norm``, ``norm``."""

    def __init__(self, in_chans: int = 1536, embed_dim: int = 768, depth: int = 12,
                 heads: int = 16, mlp_ratio: float = 4.0, slide_ngrids: int = 1000,
                 tile_size: int | None = 256, max_wsi_size: int = 262144,
                 dilated_ratios: Sequence[int] = (1, 2, 4, 8, 16),
                 segment_lengths: Sequence[int] | None = None, global_pool: bool = False,
                 layer: int | None = None):
        super().__init__()
        if layer is not None and not 0 <= int(layer) <= depth:
            raise ValueError(f"layer must be in 0..{depth} (hidden state after that many "
                             f"layers), got {layer}")
        if tile_size is not None and int(tile_size) <= 0:
            raise ValueError(f"tile_size must be positive level-0 pixels, got {tile_size}")
        # the reference computes segments at construction with its tile_size (default 256)
        segments = tuple(segment_lengths) if segment_lengths is not None else \
            optimal_segment_lengths(max_wsi_size, tile_size or 256, len(dilated_ratios))
        self.tile_size = None if tile_size is None else int(tile_size)
        self.slide_ngrids = int(slide_ngrids)
        self.global_pool = bool(global_pool)
        self.layer = None if layer is None else int(layer)
        self.patch_embed = _PatchEmbed(in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.encoder = LongNetEncoder(embed_dim, depth, heads, int(embed_dim * mlp_ratio),
                                      segments, dilated_ratios)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None,
                patch_size_level0: int | None) -> torch.Tensor:
        if coords is None:
            raise ValueError("gigapath_slide needs tile coordinates (level-0 top-left px)")
        unit = self.tile_size if self.tile_size is not None else patch_size_level0
        if unit is None:
            raise ValueError("gigapath_slide built with tile_size=None divides coordinates by "
                             "the tile extent: pass patch_size_level0")
        rows, cols = grid_cells(coords, int(unit), self.slide_ngrids)
        x = self.patch_embed(features) + sincos_2d(rows, cols, self.cls_token.shape[-1]).to(
            features.dtype)
        x = torch.cat([self.cls_token[0], x], dim=0).unsqueeze(0)
        h = self.encoder(x, state=self.layer)
        if self.global_pool:
            return self.norm(h[:, 1:].mean(dim=1))[0]
        return self.norm(h)[0, 0]


GIGAPATH_OPTIONS = ("in_chans", "embed_dim", "depth", "heads", "mlp_ratio", "slide_ngrids",
                    "tile_size", "max_wsi_size", "dilated_ratios", "segment_lengths",
                    "global_pool", "layer")


@register_family("gigapath_slide")
def build_gigapath_slide(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    return GigaPathSlideEncoder(**options(spec, kwargs, GIGAPATH_OPTIONS))
