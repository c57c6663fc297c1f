"""LongNet encoder with dilated attention (torchscale's layout), written here.

Facts from microsoft/torchscale (``architecture/config.py`` EncoderConfig defaults,
``architecture/encoder.py``, ``component/dilated_attention.py``, ``component/
multihead_attention.py``, ``component/feedforward_network.py``) as bundled by
prov-gigapath/prov-gigapath (``gigapath/torchscale``):

- pre-norm layers (``subln=True`` forces ``encoder_normalize_before``; no deepnorm, residual
  scale 1): ``x + attn(self_attn_layer_norm(x))``, then ``x + ffn(final_layer_norm(x))``;
  a final ``layer_norm`` (``normalize_output=True``); LayerNorm eps 1e-5; no embedding scale.
- feed-forward: ``fc1`` -> exact GELU (computed in fp32) -> ``ffn_layernorm`` (subln) -> ``fc2``.
- dilated attention: q/k/v projections over the whole sequence, then one branch per (segment
  length w, dilation r): the sequence is zero-padded to a multiple of ``s = min(w, L)`` and cut
  into segments; each segment is zero-padded to a multiple of r (heads to a multiple of r);
  head group g (heads ``g*H/r ... ``) attends among the segment positions ``p % r == g``.
  Padded positions are ordinary keys (projected zeros; the flash kernel gets no mask).
  Outputs return to the positions ``segment * s_padded + p`` and the first L are kept (for
  ``s % r != 0`` and several segments this is not the query's own position; reproduced as
  is). Positions a branch does not cover get log-sum-exp -1e8 (as does an lse of exactly 0,
  the reference's ``masked_fill(lse == 0)``). The branches are merged per (position, head)
  with weights softmax over branches of their log-sum-exp; then ``inner_attn_ln`` (subln)
  and ``out_proj``. Softmax scale 1/sqrt(head_dim) (flash-attention's default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

NOT_COVERED = -1e8
CHUNK_ELEMENTS = 1 << 25  # attention scores held at once (fp32: 128 MiB)


def optimal_segment_lengths(max_wsi_size: int = 262144, tile_size: int = 256,
                            count: int = 5) -> tuple[int, ...]:
    """Prov-GigaPath's ``get_optimal_segment_length``: ``count`` lengths from 1024 to the
    longest sequence ``(max_wsi_size // tile_size) ** 2``, evenly spaced in log2, truncated."""
    longest = (int(max_wsi_size) // int(tile_size)) ** 2
    exps = np.linspace(np.log2(1024), int(np.log2(longest)), count)
    return tuple(int(v) for v in np.power(2, exps).astype(int))


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       max_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale) v and the log-sum-exp of each query's scores; (G, m, d) inputs,
    chunked so that at most ``max_elements`` scores exist at a time. Scores are at least fp32
    (as flash-attention's accumulators)."""
    g_total, m, _ = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty(g_total, m, v.shape[-1], dtype=v.dtype, device=q.device)
    lse = torch.empty(g_total, m, dtype=acc, device=q.device)
    rows = max(1, min(m, max_elements // max(1, k.shape[1])))
    groups = max(1, max_elements // (rows * max(1, k.shape[1])))
    kt = k.to(acc).transpose(1, 2)
    vf = v.to(acc)
    for g0 in range(0, g_total, groups):
        for r0 in range(0, m, rows):
            scores = torch.matmul(q[g0:g0 + groups, r0:r0 + rows].to(acc),
                                  kt[g0:g0 + groups]) * scale
            part = torch.logsumexp(scores, dim=-1)
            probs = torch.exp(scores - part.unsqueeze(-1))
            out[g0:g0 + groups, r0:r0 + rows] = torch.matmul(probs, vf[g0:g0 + groups]).to(
                out.dtype)
            lse[g0:g0 + groups, r0:r0 + rows] = part
    return out, lse


def dilated_branch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment: int,
                   ratio: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One (segment, dilation) branch: q/k/v (B, L, H, d) -> out (B, L, H, d), lse (B, L, H)."""
    b, length, heads, d = q.shape
    s = min(int(segment), length)
    n = -(-length // s)
    sp = -(-s // ratio) * ratio            # segment padded to a multiple of the ratio
    hp = -(-heads // ratio) * ratio        # heads padded likewise
    hg, m = hp // ratio, sp // ratio

    def sparse(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, n * s - length)).reshape(b * n, s, heads, d)
        x = F.pad(x, (0, 0, 0, hp - heads, 0, sp - s))
        x = x.reshape(b * n, m, ratio, ratio, hg, d)           # positions (m, r), heads (r, hg)
        x = torch.diagonal(x, dim1=2, dim2=3)                   # (bn, m, hg, d, r)
        x = x.permute(0, 4, 2, 1, 3).reshape(b * n, hp, m, d)[:, :heads]
        return x.reshape(b * n * heads, m, d)

    out, lse = attention_with_lse(sparse(q), sparse(k), sparse(v), scale)
    out = F.pad(out.reshape(b * n, heads, m, d), (0, 0, 0, 0, 0, hp - heads))
    lse = F.pad(lse.reshape(b * n, heads, m), (0, 0, 0, hp - heads), value=NOT_COVERED)
    out = out.reshape(b * n, ratio, hg, m, d)
    lse = lse.reshape(b * n, ratio, hg, m)
    dense_out = out.new_zeros(b * n, m, ratio, hp, d)
    dense_lse = lse.new_full((b * n, m, ratio, hp), NOT_COVERED)
    for g in range(ratio):  # head group g holds the positions p % ratio == g
        dense_out[:, :, g, g * hg:(g + 1) * hg] = out[:, g].permute(0, 2, 1, 3)
        dense_lse[:, :, g, g * hg:(g + 1) * hg] = lse[:, g].permute(0, 2, 1)
    dense_out = dense_out.reshape(b, n * sp, hp, d)[:, :length, :heads]
    dense_lse = dense_lse.reshape(b, n * sp, hp)[:, :length, :heads]
    dense_lse = dense_lse.masked_fill(dense_lse == 0, NOT_COVERED)
    return dense_out, dense_lse


class DilatedAttention(nn.Module):
    def __init__(self, dim: int, heads: int, segments: Sequence[int], ratios: Sequence[int],
                 eps: float = 1e-5):
        super().__init__()
        if len(segments) != len(ratios):
            raise ValueError("segment lengths and dilated ratios must pair up")
        self.num_heads = heads
        self.head_dim = dim // heads
        self.segments = tuple(int(s) for s in segments)
        self.ratios = tuple(int(r) for r in ratios)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.inner_attn_ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        split = (b, length, self.num_heads, self.head_dim)
        q, k, v = (p(x).reshape(split) for p in (self.q_proj, self.k_proj, self.v_proj))
        scale = self.head_dim ** -0.5
        outs, lses = zip(*(dilated_branch(q, k, v, s, r, scale)
                           for s, r in zip(self.segments, self.ratios)))
        weights = torch.softmax(torch.stack(lses), dim=0).unsqueeze(-1)  # (branches,B,L,H,1)
        attn = (torch.stack(outs) * weights.to(outs[0].dtype)).sum(0)
        return self.out_proj(self.inner_attn_ln(attn.reshape(b, length, dim)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h.float()).type_as(h)
        return self.fc2(self.ffn_layernorm(h))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, segments: Sequence[int],
                 ratios: Sequence[int], eps: float = 1e-5):
        super().__init__()
        self.self_attn = DilatedAttention(dim, heads, segments, ratios, eps)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, hidden, eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.ffn(self.final_layer_norm(x))


class LongNetEncoder(nn.Module):
    """``layers.<i>`` + final ``layer_norm`` (torchscale Encoder without token embeddings)."""

    def __init__(self, dim: int, depth: int, heads: int, hidden: int, segments: Sequence[int],
                 ratios: Sequence[int], eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, hidden, segments, ratios, eps)
                                    for _ in range(depth))
        self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, state: int | None = None) -> torch.Tensor:
        """The normalised output, or with `state=k` the hidden state after k layers (the
        reference's ``encoder_states[k]``: 0 is the input, no final layer_norm)."""
        if state is not None:
            for layer in self.layers[:state]:
                x = layer(x)
            return x
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)
