"""MIL architectures, written from their papers; rebuilt by registered name only.

Every model maps a padded batch of bags ``x (B, N, D)`` with ``mask (B, N)`` (True = a real
tile) to logits ``(B, n_out)``; `attention(x, mask)` gives one (B, N) weight per tile (zero on
padding), and `loss_terms(x, mask, y)` returns the logits plus an auxiliary loss (CLAM's
instance clustering) or None.

- attention_mil: Ilse et al. 2018, gated attention pooling (the `GatedAttention` of the slide
  encoders), one linear head.
- transmil: Shao et al. 2021: linear projection, class token, two self-attention layers with the
  PPEG positional encoding (depthwise 7/5/3 convolutions on the tokens laid out as a square)
  between them. Exact softmax attention stands in for the paper's Nystrom approximation;
  tile attention is the class token's attention rollout.
- clam_sb / clam_mb: Lu et al. 2021, gated attention with one (sb) or one-per-class (mb)
  branches; instance clustering: the top-k attended tiles of the true class are pseudo-labelled
  positive, the bottom-k negative (plus top-k negative for other classes when there are more
  than two), by per-class instance classifiers. Loss = w * bag + (1 - w) * instance.
- mil_fc: per-tile MLP, mean or max pooled, linear head (baselines).
- feather: the FEATHER ABMIL slide encoder (MIL-Lab) with a linear head, optionally started
  from its published weights (fine-tuning).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..model.slide_encoders import build_slide_encoder
from ..model.slide_encoders.families.mil import FeatherABMIL, GatedAttention
from .config import MILError


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis, zero where `mask` is False."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool,
                                                    device=x.device)


class _MIL(nn.Module):
    def loss_terms(self, x: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self(x, mask), None


class AttentionMIL(_MIL):
    def __init__(self, n_in: int, n_out: int, hidden: int = 256, attn_hidden: int = 128,
                 dropout: float = 0.25):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_net = GatedAttention(hidden, attn_hidden, 1, dropout)
        self.head = nn.Linear(hidden, n_out)

    def _attend(self, x, mask):
        h = self.encoder(x)
        return h, masked_softmax(self.attention_net(h).squeeze(-1), mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, a = self._attend(x, mask)
        return self.head(torch.einsum("bn,bnd->bd", a, h))

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._attend(x, mask)[1]


class FeatherMIL(AttentionMIL):
    """FEATHER's ABMIL (same state-dict keys under `encoder.`) plus a linear head."""

    def __init__(self, n_in: int, n_out: int, embed_dim: int = 512, attn_dim: int = 384,
                 dropout: float = 0.25, weights: str | None = None, pretrained: bool = False):
        _MIL.__init__(self)
        self.encoder_abmil = FeatherABMIL(n_in, embed_dim, attn_dim, 1)
        self.head = nn.Linear(embed_dim, n_out)
        self.drop = nn.Dropout(dropout)
        if weights or pretrained:
            enc = build_slide_encoder("feather", weights=weights, device="cpu")
            start = enc.model.state_dict()
            want = start["model.patch_embed.0.weight"].shape[1]
            if want != n_in:
                raise MILError(f"feather's weights take {want} features per tile "
                                 f"({enc.spec.tile_extractor} bags); these bags have {n_in}")
            self.encoder_abmil.load_state_dict(start)

    def _attend(self, x, mask):
        abmil = self.encoder_abmil.model
        h = self.drop(abmil.patch_embed(x))
        return h, masked_softmax(abmil.global_attn(h).squeeze(-1), mask)


class _PPEG(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        side = max(1, math.ceil(math.sqrt(n)))
        grid = torch.zeros(b, side * side, d, dtype=tokens.dtype, device=tokens.device)
        grid[:, :n] = tokens * mask.unsqueeze(-1)
        grid = grid.transpose(1, 2).reshape(b, d, side, side)
        out = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        return out.flatten(2).transpose(1, 2)[:, :n]


class _TransLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x, pad):
        y = self.norm(x)
        out, w = self.attn(y, y, y, key_padding_mask=pad, need_weights=False)
        return x + out, w


class TransMIL(_MIL):
    def __init__(self, n_in: int, n_out: int, hidden: int = 512, heads: int = 8,
                 layers: int = 2, dropout: float = 0.1):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"transmil: hidden ({hidden}) must be a multiple of heads "
                             f"({heads})")
        self.fc1 = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.layers = nn.ModuleList(_TransLayer(hidden, heads, dropout)
                                    for _ in range(max(1, layers)))
        self.pos_layer = _PPEG(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, n_out)
        nn.init.normal_(self.cls_token, std=0.02)

    def _run(self, x, mask, keep_inputs=False):
        mask = _full_mask(x, mask)
        h = self.fc1(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        t = torch.cat([cls, h], dim=1)
        inputs = []
        for i, layer in enumerate(self.layers):
            if keep_inputs:
                inputs.append(layer.norm(t))
            t = layer(t, pad)[0]
            if i == 0:
                t = torch.cat([t[:, :1], self.pos_layer(t[:, 1:], mask)], dim=1)
        return self.norm(t)[:, 0], inputs, pad

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self._run(x, mask)[0])

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention rollout (Abnar & Zuidema 2020) of the class token over the tiles: the
        heads-averaged attention of every layer, with the residual as 0.5 identity, multiplied
        through the layers (the last layer's weights alone have mixed tokens already). Only the
        class token's row is carried, and each layer's attention is formed a block of rows at
        a time, so memory grows with the number of tiles, not its square."""
        _, inputs, pad = self._run(x, mask, keep_inputs=True)
        r = torch.zeros(pad.shape, dtype=x.dtype, device=x.device)
        r[:, 0] = 1
        for layer, y in zip(reversed(self.layers), reversed(inputs)):
            r = 0.5 * _row_times_attention(layer.attn, y, pad, r) + 0.5 * r
        att = r[:, 1:] * _full_mask(x, mask)
        return att / att.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def _row_times_attention(attn: nn.MultiheadAttention, y: torch.Tensor, pad: torch.Tensor,
                         r: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """r @ A for the heads-averaged attention matrix A of `attn` on `y` (B, S, E), computed a
    block of query rows at a time (at most `budget` scores in memory)."""
    b, s, e = y.shape
    heads = attn.num_heads
    q, k, _ = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).split(e, dim=-1)
    q = q.reshape(b, s, heads, -1).transpose(1, 2) * (e // heads) ** -0.5   # (B, h, S, d)
    k = k.reshape(b, s, heads, -1).transpose(1, 2)
    bias = torch.zeros(pad.shape, dtype=y.dtype, device=y.device).masked_fill(
        pad, float("-inf"))[:, None, None, :]
    out = torch.zeros_like(r)
    step = max(1, budget // max(1, heads * s))
    for i in range(0, s, step):
        rows = torch.softmax(q[:, :, i:i + step] @ k.transpose(-1, -2) + bias, dim=-1)
        out += torch.einsum("bc,bhcs->bs", r[:, i:i + step], rows) / heads
    return out


class CLAM(_MIL):
    def __init__(self, n_in: int, n_out: int, hidden: int = 512, attn_hidden: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, bag_weight: float = 0.7,
                 multi_branch: bool = False):
        super().__init__()
        self.multi_branch, self.k_sample, self.bag_weight = multi_branch, k_sample, bag_weight
        self.n_out = n_out
        self.fc = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_net = GatedAttention(hidden, attn_hidden, n_out if multi_branch else 1,
                                            dropout)
        if multi_branch:
            self.classifiers = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_out))
        else:
            self.classifiers = nn.Linear(hidden, n_out)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_out))

    def _attend(self, x, mask):
        h = self.fc(x)
        raw = self.attention_net(h).transpose(1, 2)               # (B, branches, N)
        m = None if mask is None else mask.unsqueeze(1)
        return h, raw, masked_softmax(raw, m)

    def _logits(self, h, a):
        pooled = a @ h                                            # (B, branches, hidden)
        if self.multi_branch:
            return torch.cat([c(pooled[:, i]) for i, c in enumerate(self.classifiers)], dim=1)
        return self.classifiers(pooled[:, 0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, _, a = self._attend(x, mask)
        return self._logits(h, a)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of the single branch (sb) or of the predicted class's branch (mb)."""
        h, _, a = self._attend(x, mask)
        if not self.multi_branch:
            return a[:, 0]
        pred = self._logits(h, a).argmax(dim=1)
        return a[torch.arange(len(pred)), pred]

    def loss_terms(self, x, mask, y):
        h, raw, a = self._attend(x, mask)
        logits = self._logits(h, a)
        mask = _full_mask(x, mask)
        losses = []
        for b in range(x.shape[0]):
            valid = mask[b].nonzero().squeeze(1)
            k = min(self.k_sample, len(valid) // 2)
            if k == 0:
                continue
            hb = h[b, valid]
            for c in range(self.n_out):
                scores = raw[b, c if self.multi_branch else 0, valid]
                top = torch.topk(scores, k).indices
                if int(y[b]) == c:
                    bottom = torch.topk(-scores, k).indices
                    inst = hb[torch.cat([top, bottom])]
                    target = torch.cat([torch.ones(k), torch.zeros(k)]).long()
                elif self.n_out > 2:
                    inst, target = hb[top], torch.zeros(k, dtype=torch.long)
                else:
                    continue
                losses.append(F.cross_entropy(self.instance_classifiers[c](inst),
                                              target.to(x.device)))
        extra = torch.stack(losses).mean() if losses else None
        return logits, extra


class MILFC(_MIL):
    def __init__(self, n_in: int, n_out: int, hidden: int = 256, pool: str = "mean",
                 dropout: float = 0.25):
        super().__init__()
        self.pool = pool
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_out)

    def _pooled(self, x, mask):
        """(pooled (B, hidden), argmax tile per dimension (B, hidden) or None for mean)."""
        mask = _full_mask(x, mask)
        h = self.encoder(x)
        if self.pool == "max":
            best = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1)
            return best.values, best.indices
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1), None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self._pooled(x, mask)[0])

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mean: uniform over the tiles; max: each tile's share of the pooled dimensions."""
        mask = _full_mask(x, mask)
        if self.pool == "mean":
            m = mask.to(x.dtype)
            return m / m.sum(1, keepdim=True).clamp_min(1)
        idx = self._pooled(x, mask)[1]                            # (B, hidden)
        counts = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=x.dtype, device=x.device))
        return counts / idx.shape[1]


def build_model(name: str, n_in: int, n_out: int, **kwargs: Any) -> nn.Module:
    """The architecture registered as `name`, for `n_in` features and `n_out` outputs."""
    if name == "attention_mil":
        return AttentionMIL(n_in, n_out, **kwargs)
    if name == "transmil":
        return TransMIL(n_in, n_out, **kwargs)
    if name in ("clam_sb", "clam_mb"):
        return CLAM(n_in, n_out, multi_branch=name == "clam_mb", **kwargs)
    if name == "mil_fc":
        return MILFC(n_in, n_out, **kwargs)
    if name == "feather":
        return FeatherMIL(n_in, n_out, **kwargs)
    raise KeyError(f"unknown MIL model {name!r}")


__all__ = ["AttentionMIL", "CLAM", "FeatherMIL", "MILFC", "TransMIL", "build_model",
           "masked_softmax"]
