"""PRISM's slide encoder (the Perceiver of paige-ai/Prism), written here. Slide part only: the
BioGPT report decoder and the contrastive projections are not built.

Facts from the model's Hugging Face code (``perceiver.py``: CrossAttention, MHSA, GEGLU
FeedForward, Perceiver, PerceiverResampler; ``configuring_prism.py`` PerceiverConfig defaults;
``modeling_prism.py`` ``slide_representations``) and model card:

- input: Virchow (v1) tile embeddings, 2560-d (class token + mean of the patch tokens); no
  coordinates.
- 513 learned latents (1 slide-embedding query + 512 image latents) of width 1280.
- 8 Perceiver layers; each: cross-attention of the latents to the tiles (pre-LayerNorm on the
  latents only, 1 head of width 1280, bias-free q / kv / out projections), a GEGLU
  feed-forward (LayerNorm, Linear(1280, 2560), x * gelu(gate), Linear(1280, 1280)), then a
  6-block self-attention transformer over the latents (LayerNorm + bias-free
  nn.MultiheadAttention with 8 heads, GEGLU feed-forward), all residual.
- weight sharing: layers 0 and 1 own their cross-attention blocks, layers 2-7 reuse layer 1's
  (``share_xattn_start_layer=1``); the transformer of layer 0 is reused by every layer
  (``share_tf_start_layer=0``).
- output: ``cls_norm`` (LayerNorm) of latent 0 = ``image_embedding``, 1280-d (the slide
  embedding of ``slide_representations``); ``img_norm`` of the other 512 = ``image_latents``.
- a single slide needs no mask (the reference adds a constant all-ones float mask to every
  score, which leaves the softmax unchanged).
- weights: gated paige-ai/Prism, CC-BY-NC-ND-4.0; keys under ``image_resampler.``. Shared
  blocks appear under several names in a full state dict; a checkpoint that keeps only one
  name per shared tensor (safetensors drops duplicates) is completed from it
  (`canonicalize_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ....errors import WeightsError
from ..spec import SlideEncoderSpec
from . import register_family
from .mil import options


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, query_dim // heads
        inner = self.head_dim * heads
        self.x_norm = nn.LayerNorm(query_dim)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = context.shape
        k, v = self.to_kv(context).reshape(b, n, 2, self.heads, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, m, _ = x.shape
        q = self.to_q(self.x_norm(x)).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, *kv)
        return self.to_out(out.transpose(1, 2).reshape(b, m, -1))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.mha(x, x, x, need_weights=False)[0]


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), GEGLU(),
                                 nn.Linear(dim * mult, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


class Perceiver(nn.Module):
    def __init__(self, latents: int, dim: int, context_dim: int, mhsa_heads: int, depth: int,
                 transformer_depth: int, share_xattn_from: int, share_tf_from: int,
                 xattn_heads: int, mlp_mult: int):
        super().__init__()
        self.share_xattn_from = share_xattn_from
        self.latents = nn.Parameter(torch.randn(latents, dim))
        layers: list[nn.ModuleDict] = []
        for i in range(depth):
            xattn = layers[-1]["xattn"] if i > share_xattn_from else nn.ModuleDict(
                {"xattn": CrossAttention(dim, context_dim, xattn_heads),
                 "ff": FeedForward(dim, mlp_mult)})
            tf = layers[-1]["tf"] if i > share_tf_from else nn.ModuleList(
                nn.ModuleDict({"mhsa": SelfAttention(dim, mhsa_heads),
                               "ff": FeedForward(dim, mlp_mult)})
                for _ in range(transformer_depth))
            layers.append(nn.ModuleDict({"xattn": xattn, "tf": tf}))
        self.layers = nn.ModuleList(layers)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = self.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
        kv = None
        for i, layer in enumerate(self.layers):
            block = layer["xattn"]
            if i <= self.share_xattn_from or kv is None:  # later layers share layer 1's k/v
                kv = block["xattn"].keys_values(context)
            x = block["xattn"](x, kv) + x
            x = block["ff"](x) + x
            for sub in layer["tf"]:
                x = sub["mhsa"](x) + x
                x = sub["ff"](x) + x
        return x


class PerceiverResampler(nn.Module):
    def __init__(self, latent_seq: int = 512, latent_dim: int = 1280, context_dim: int = 2560,
                 mhsa_heads: int = 8, perceiver_depth: int = 8, transformer_depth: int = 6,
                 share_xattn_start_layer: int = 1, share_tf_start_layer: int = 0,
                 xattn_heads: int = 1, mlp_mult: int = 1):
        super().__init__()
        self.cls_norm = nn.LayerNorm(latent_dim)
        self.img_norm = nn.LayerNorm(latent_dim)
        self.perceiver = Perceiver(1 + latent_seq, latent_dim, context_dim, mhsa_heads,
                                   perceiver_depth, transformer_depth, share_xattn_start_layer,
                                   share_tf_start_layer, xattn_heads, mlp_mult)

    def forward(self, tiles: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.perceiver(tiles)
        return {"image_embedding": self.cls_norm(x[:, 0]),
                "image_latents": self.img_norm(x[:, 1:])}


def _tied_groups(module: nn.Module) -> list[list[str]]:
    """State-dict names that hold the same tensor (shared blocks), each group sorted."""
    groups: dict[int, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [sorted(names) for names in groups.values() if len(names) > 1]


class PrismSlideEncoder(nn.Module):
    """``image_resampler.*`` of the Prism checkpoint; returns the 1280-d image embedding."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        self.image_resampler = PerceiverResampler(**kwargs)

    def forward(self, features: torch.Tensor, coords: Any = None,
                patch_size_level0: Any = None) -> torch.Tensor:
        return self.image_resampler(features.unsqueeze(0))["image_embedding"][0]

    def canonicalize_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fill the names of shared blocks a deduplicated checkpoint left out from the one it
        kept; names given more than once must hold equal tensors."""
        out = dict(sd)
        for names in _tied_groups(self):
            present = [n for n in names if n in out]
            if not present:
                continue  # reported as missing by the strict check
            ref = out[present[0]]
            for n in present[1:]:
                if out[n].shape != ref.shape or not torch.equal(out[n], ref):
                    raise WeightsError(f"checkpoint holds different tensors for the shared "
                                     f"weights {present[0]!r} and {n!r}")
            for n in names:
                out.setdefault(n, ref)
        return out


PRISM_OPTIONS = ("latent_seq", "latent_dim", "context_dim", "mhsa_heads", "perceiver_depth",
                 "transformer_depth", "share_xattn_start_layer", "share_tf_start_layer",
                 "xattn_heads", "mlp_mult")


@register_family("prism")
def build_prism(spec: SlideEncoderSpec, **kwargs: Any) -> nn.Module:
    return PrismSlideEncoder(**options(spec, kwargs, PRISM_OPTIONS))
