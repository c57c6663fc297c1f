"""Dense patch tokens and class-token attention maps of ViT tile extractors (timm layout).

- `dense(extractor, tiles)` -> (B, D, h, w): the final-norm patch tokens on their grid
  (prefix tokens, i.e. class and register tokens, removed).
- `attention(extractor, tiles, blocks=(-1,))` -> (B, heads, h, w) per block: softmax attention
  of the class token over the patch tokens (``include_registers=True``: the register tokens'
  rows too, channels ordered [class, registers...] x heads). It is computed explicitly from the block's own
  q/k projections (and q/k norms) on the block's input, so it is exact whatever attention
  kernel the model runs (fused SDPA returns no weights). Columns of prefix tokens are dropped,
  so each map sums to at most 1.

``preprocessed=True`` takes float (B, 3, H, W) tiles already normalised (no resize or crop), for
callers that keep the tiles' own geometry (a dense map registered to the input tile).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _vit(extractor: Any):
    net = getattr(extractor, "backbone", None)
    if net is None or not hasattr(net, "blocks") or not hasattr(net, "patch_embed") or \
            not hasattr(net, "num_prefix_tokens"):
        raise TypeError(f"{extractor.name}: dense/attention outputs need a ViT tile extractor "
                        "(timm VisionTransformer layout)")
    return net


def _tiles(extractor: Any, batch: Any) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
        raise TypeError("expected uint8 tiles (numpy or tensor, NHWC or NCHW)")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"expected (B, H, W, 3) or (B, 3, H, W) tiles, got {tuple(t.shape)}")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    return extractor.preprocess(t.contiguous().to(extractor.device)).float()


def _inputs(extractor: Any, batch: Any, preprocessed: bool) -> torch.Tensor:
    if not preprocessed:
        return _tiles(extractor, batch)
    if not isinstance(batch, torch.Tensor) or not batch.is_floating_point() or \
            batch.ndim != 4 or batch.shape[1] != 3:
        raise TypeError("preprocessed tiles are a normalised float (B, 3, H, W) tensor")
    return batch.to(extractor.device).float()


def _grid(net: Any, x: torch.Tensor) -> tuple[int, int]:
    pe = net.patch_embed
    if getattr(net, "dynamic_img_size", False) and hasattr(pe, "dynamic_feat_size"):
        return tuple(int(v) for v in pe.dynamic_feat_size(tuple(x.shape[-2:])))
    return tuple(int(v) for v in pe.grid_size)


def dense(extractor: Any, batch: Any, *, preprocessed: bool = False) -> np.ndarray:
    """(B, D, h, w) float32 patch tokens after the final norm."""
    net = _vit(extractor)
    x = _inputs(extractor, batch, preprocessed)
    h, w = _grid(net, x)
    with torch.inference_mode():
        tokens = net.forward_features(x).float()
    patches = tokens[:, net.num_prefix_tokens:]
    if patches.shape[1] != h * w:
        raise RuntimeError(f"{extractor.name}: {patches.shape[1]} patch tokens for a {h}x{w} "
                           "grid")
    return patches.reshape(len(x), h, w, -1).permute(0, 3, 1, 2).cpu().numpy()


def _cls_attention(attn: Any, x: torch.Tensor, prefix: int, rows: int = 1) -> torch.Tensor:
    if not hasattr(attn, "qkv"):
        raise TypeError(f"{type(attn).__name__}: no fused qkv projection; attention maps need "
                        "timm's Attention layout")
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    scale = getattr(attn, "scale", (c // heads) ** -0.5)
    probs = torch.softmax((q[:, :, :rows].float() * scale) @ k.float().transpose(-2, -1), dim=-1)
    return probs[..., prefix:].transpose(1, 2).flatten(1, 2)  # (B, rows x heads, patches)


def attention(extractor: Any, batch: Any, blocks: Sequence[int] = (-1,), *,
              include_registers: bool = False, preprocessed: bool = False) -> np.ndarray:
    """(B, heads, h, w) class-token attention of one block, or (B, len(blocks), heads, h, w);
    with registers (B, [len(blocks),] (1 + registers) x heads, h, w)."""
    net = _vit(extractor)
    n_blocks = len(net.blocks)
    idx = [int(i) % n_blocks for i in blocks]
    if any(not -n_blocks <= int(i) < n_blocks for i in blocks) or not idx:
        raise ValueError(f"blocks must index the {n_blocks} blocks, got {list(blocks)}")
    x = _inputs(extractor, batch, preprocessed)
    h, w = _grid(net, x)
    rows = int(net.num_prefix_tokens) if include_registers else 1
    maps: dict[int, torch.Tensor] = {}

    def hook_for(i: int):
        def hook(module, args):
            maps[i] = _cls_attention(module, args[0], net.num_prefix_tokens, rows)
        return hook

    handles = [net.blocks[i].attn.register_forward_pre_hook(hook_for(i)) for i in set(idx)]
    try:
        with torch.inference_mode():
            net.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    out = torch.stack([maps[i].reshape(len(x), -1, h, w) for i in idx], dim=1).cpu().numpy()
    return out[:, 0] if len(idx) == 1 else out
