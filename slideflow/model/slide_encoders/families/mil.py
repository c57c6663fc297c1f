"""Attention-MIL slide encoders, written here in their authors' state-dict layouts.

Every module maps ``(features (N, D) float, coords (N, 2) int64, patch_size_level0)`` to one
(dim,) vector; module attribute names reproduce the official checkpoints' keys so that
their state dicts load with no missing or unexpected tensor.

- mean: mean over tiles.
- feather (FEATHER-24K, MahmoodLab MIL-Lab ``src/models/abmil.py`` ABMIL, Hugging Face
  ``ABMILModel`` wrapper -> keys ``model.*``): patch_embed = Linear(in, 512) + ReLU, gated
  attention (Linear(512, 384) tanh x Linear(512, 384) sigmoid -> Linear(384, 1)), softmax
  over tiles, attention-weighted sum -> 512. No classifier (the FEATHER checkpoints carry no
  head, MIL-Lab README).
- chief (hms-dbmi/CHIEF ``models/CHIEF.py``, size 'small' = [768, 512, 256], gated):
  attention_net = Linear(768, 512) + ReLU + Dropout + gated attention; ``WSI_feature`` =
  softmax(A) @ h -> 512 (the organ text embedding is added only to the classifier input,
  never to WSI_feature).
- madeleine (mahmoodlab/MADELEINE ``models/Model.py`` ``encode_he``): pre_attn MLP
  (Linear+LayerNorm+GELU x 3, last one widened to 512 x n_heads), one gated attention per
  head over channels ``c::n_heads`` (einops '(e c)'), softmax over tiles, per-head sums
  flattened e-major and projected 512 x n_heads -> 512.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..spec import SlideEncoderSpec
from . import register_family


class MeanPool(nn.Module):
    def forward(self, features: torch.Tensor, coords: torch.Tensor | None = None,
                patch_size_level0: int | None = None) -> torch.Tensor:
        return features.float().mean(dim=0)


def options(spec: SlideEncoderSpec, kwargs: dict[str, Any], allowed: tuple[str, ...]
            ) -> dict[str, Any]:
    """spec.build overridden by kwargs; unknown names are errors, never dropped."""
    merged = {**dict(spec.build), **kwargs}
    unknown = set(merged) - set(allowed)
    if unknown:
        raise TypeError(f"{spec.name}: unknown options {sorted(unknown)}; valid: {list(allowed)}")
    return merged


@register_family("mean")
def build_mean(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    options(spec, kwargs, ())
    return MeanPool()


class GatedAttention(nn.Module):
    """tanh/sigmoid gated attention scores (Ilse et al. 2018); key names a/b/c as in CLAM."""

    def __init__(self, dim: int, hidden: int, heads: int = 1, dropout: float = 0.25):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(),
                                         nn.Dropout(dropout))
        self.attention_c = nn.Linear(hidden, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(x) * self.attention_b(x))


# ---------------------------------------------------------------------------- FEATHER
class _ABMIL(nn.Module):
    def __init__(self, in_dim: int, embed_dim: int, attn_dim: int, num_heads: int):
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU())
        self.global_attn = GatedAttention(embed_dim, attn_dim, num_heads)


class FeatherABMIL(nn.Module):
    def __init__(self, in_dim: int = 768, embed_dim: int = 512, attn_dim: int = 384,
                 num_heads: int = 1):
        super().__init__()
        self.model = _ABMIL(in_dim, embed_dim, attn_dim, num_heads)

    def attention(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.model.patch_embed(features.float())         # (N, E)
        return h, self.model.global_attn(h).transpose(0, 1)   # (K, N) raw scores

    def forward(self, features, coords=None, patch_size_level0=None) -> torch.Tensor:
        h, scores = self.attention(features)
        return (F.softmax(scores, dim=-1) @ h).reshape(-1)    # heads concatenated


@register_family("feather")
def build_feather(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    b = options(spec, kwargs, ("in_dim", "embed_dim", "attn_dim", "num_heads"))
    return FeatherABMIL(int(b.get("in_dim", spec.tile_features or 768)),
                        int(b.get("embed_dim", 512)), int(b.get("attn_dim", 384)),
                        int(b.get("num_heads", 1)))


# ---------------------------------------------------------------------------- CHIEF
class _AttnNetGated(GatedAttention):
    """CHIEF's gated attention: the same layers, returning (scores, input)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return super().forward(x), x


class _AttHead(nn.Module):  # trained auxiliary head; kept for the checkpoint layout
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)


class ChiefSlide(nn.Module):
    def __init__(self, size: tuple[int, int, int] = (768, 512, 256), n_classes: int = 2,
                 n_organs: int = 19, text_dim: int = 768):
        super().__init__()
        i, h, a = size
        self.attention_net = nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Dropout(0.25),
                                           _AttnNetGated(h, a))
        self.classifiers = nn.Linear(h, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(h, 2) for _ in range(n_classes))
        self.att_head = _AttHead(h, a)
        self.text_to_vision = nn.Sequential(nn.Linear(text_dim, h), nn.ReLU(), nn.Dropout(0.25))
        self.register_buffer("organ_embedding", torch.zeros(n_organs, text_dim))

    def attention(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, h = self.attention_net(features.float())
        return h, scores.transpose(0, 1)                      # (1, N)

    def forward(self, features, coords=None, patch_size_level0=None) -> torch.Tensor:
        h, scores = self.attention(features)
        return (F.softmax(scores, dim=1) @ h).reshape(-1)


@register_family("chief")
def build_chief(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    b = options(spec, kwargs, ("size", "n_classes", "n_organs", "text_dim"))
    return ChiefSlide(tuple(b.get("size", (768, 512, 256))), int(b.get("n_classes", 2)),
                      int(b.get("n_organs", 19)), int(b.get("text_dim", 768)))


# ---------------------------------------------------------------------------- MADELEINE
class _ABMILEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, heads: int, attn_hidden: int):
        super().__init__()
        self.n_heads = heads
        self.pre_attn = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(0.1),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(0.1),
            nn.Linear(hidden, hidden * heads), nn.LayerNorm(hidden * heads), nn.GELU(),
            nn.Dropout(0.1))
        self.attn = nn.ModuleList(GatedAttention(hidden, attn_hidden) for _ in range(heads))


class MadeleineSlide(nn.Module):
    def __init__(self, in_dim: int = 512, hidden: int = 512, heads: int = 4,
                 attn_hidden: int = 512, token_dim: int = 128):
        super().__init__()
        self.token_projector = nn.Linear(attn_hidden * heads, token_dim)  # training only
        self.wsi_embedders = _ABMILEmbedder(in_dim, hidden, heads, attn_hidden)
        self.projector = nn.Linear(attn_hidden * heads, attn_hidden)

    def attention(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.wsi_embedders.pre_attn(features.float())     # (N, E * C), '(e c)'
        n, c = emb.shape[0], self.wsi_embedders.n_heads
        emb = emb.reshape(n, -1, c)                              # (N, E, C)
        scores = torch.stack([net(emb[:, :, i]) for i, net in
                              enumerate(self.wsi_embedders.attn)], dim=-1)  # (N, 1, C)
        return emb, scores

    def forward(self, features, coords=None, patch_size_level0=None) -> torch.Tensor:
        emb, scores = self.attention(features)
        pooled = (emb * F.softmax(scores, dim=0)).sum(dim=0)     # (E, C)
        return self.projector(pooled.reshape(-1))                # e-major flatten, as view()


@register_family("madeleine")
def build_madeleine(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    b = options(spec, kwargs, ("in_dim", "hidden", "n_heads", "attn_hidden", "token_dim"))
    return MadeleineSlide(int(b.get("in_dim", spec.tile_features or 512)),
                          int(b.get("hidden", 512)), int(b.get("n_heads", 4)),
                          int(b.get("attn_hidden", 512)), int(b.get("token_dim", 128)))
