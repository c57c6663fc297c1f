"""MUSK's image path: the vision branch of a BEiT-3 multiway transformer (torchscale layout).

Written for slideflow from the architecture as published (lilab-stanford/MUSK
``musk_large_patch16_384``: torchscale ``EncoderConfig(multiway=True, subln=True,
normalize_before=True, no_scale_embedding=True, layernorm_embedding=False,
normalize_output=True)``, ViT-L/16 width at 384 px). An image-only forward routes every token
through the multiway ``A`` experts, so only those are built; the checkpoint's ``B`` (text)
experts, text embedding, language head and logit scale are ignored when loading.

Per layer (pre-norm, sub-LayerNorm): ``x + out_proj(inner_attn_ln(attn(self_attn_layer_norm
(x))))`` then ``x + fc2(ffn_layernorm(gelu(fc1(final_layer_norm(x)))))``; tokens = [CLS,
patches] + position embeddings read from index 2 on (fairseq offset); the final
``encoder.layer_norm``.

Feature (MUSK README: ``with_head=False, out_norm=False, ms_aug=True, return_global=True`` for
linear probes and MIL, the default here): multi-scale augmentation as in MUSK's
``utils.MultiScaleForward`` -- scales (1, 2), pieces of the input size: the class token of the
tile, concatenated with the mean class token of the 2 x 2 pieces of the tile upsampled 2x
(bicubic, no antialias, on the normalised tensor), 2 x 1024 = 2048-d, five forwards per tile.
``ms_aug=False`` gives the 1024-d class token of one forward (TRIDENT's default).
``with_head=True`` applies the bias-free ``vision_head`` (to the scale-1 class token when
multi-scale, so 1024-d), ``out_norm=True`` L2-normalises (both are for retrieval).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Built
from ..spec import ExtractorSpec
from . import register_family


class _A(nn.Module):
    """Holds the multiway 'A' expert under the checkpoint's name."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.A = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.scaling = (dim // heads) ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            _A(nn.Linear(dim, dim)) for _ in range(4))
        self.inner_attn_ln = _A(nn.LayerNorm(dim, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q = (self.q_proj(x) * self.scaling).view(b, n, h, -1).transpose(1, 2)
        k = self.k_proj(x).view(b, n, h, -1).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, -1).transpose(1, 2)
        attn = F.softmax(q @ k.transpose(-1, -2), dim=-1, dtype=torch.float32).type_as(q)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.out_proj(self.inner_attn_ln(out))


class _FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x)
        y = F.gelu(y.float()).type_as(y)
        return self.fc2(self.ffn_layernorm(y))


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.self_attn = _Attention(dim, heads, eps)
        self.self_attn_layer_norm = _A(nn.LayerNorm(dim, eps=eps))
        self.ffn = _A(_FFN(dim, hidden, eps))
        self.final_layer_norm = _A(nn.LayerNorm(dim, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.ffn(self.final_layer_norm(x))


class _VisionEmbed(nn.Module):
    def __init__(self, img: int, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.num_patches = (img // patch) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class _Encoder(nn.Module):
    def __init__(self, n_pos: int, dim: int, depth: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.embed_positions = _A(nn.Embedding(n_pos, dim))
        self.layers = nn.ModuleList(_Layer(dim, heads, hidden, eps) for _ in range(depth))
        self.layer_norm = _A(nn.LayerNorm(dim, eps=eps))


class _BEiT3Vision(nn.Module):
    def __init__(self, img: int, patch: int, dim: int, depth: int, heads: int, hidden: int,
                 eps: float):
        super().__init__()
        self.vision_embed = _VisionEmbed(img, patch, dim)
        # fairseq convention: positions start at 2, hence num_patches + 1 (cls) + 2 rows
        self.encoder = _Encoder(self.vision_embed.num_patches + 3, dim, depth, heads, hidden,
                                eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vision_embed(x)
        pos = torch.arange(2, x.shape[1] + 2, device=x.device)
        x = x + self.encoder.embed_positions.A.weight[pos].unsqueeze(0)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.encoder.layer_norm(x)


MS_SCALES = (1, 2)  # MUSK utils.MultiScaleForward defaults


class MUSKVision(nn.Module):
    def __init__(self, img: int = 384, patch: int = 16, dim: int = 1024, depth: int = 24,
                 heads: int = 16, hidden: int = 4096, eps: float = 1e-5,
                 with_head: bool = False, out_norm: bool = False, ms_aug: bool = False):
        super().__init__()
        self.beit3 = _BEiT3Vision(img, patch, dim, depth, heads, hidden, eps)
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.with_head, self.out_norm, self.ms_aug = with_head, out_norm, ms_aug
        self.dim = dim

    @property
    def num_features(self) -> int:
        return 2 * self.dim if self.ms_aug and not self.with_head else self.dim

    def _multiscale(self, x: torch.Tensor) -> torch.Tensor:
        """Class token at scale 1 ++ mean class token of the pieces at scale 2."""
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"MUSK multi-scale needs square (B, C, S, S) input, got "
                             f"{tuple(x.shape)}")
        b, size = x.shape[0], x.shape[-1]
        outs = []
        for scale in MS_SCALES:
            px = int(size * scale)
            n = math.ceil(px / size)
            y = F.interpolate(x.float(), size=px, mode="bicubic").to(x.dtype)
            # (nh nw b) order of the pieces, as MUSK's split_chessboard
            pieces = y.unflatten(2, (n, px // n)).unflatten(4, (n, px // n))
            pieces = pieces.permute(2, 4, 0, 1, 3, 5).reshape(n * n * b, x.shape[1],
                                                               px // n, px // n)
            cls = self.beit3(pieces)[:, 0]
            outs.append(cls.reshape(n * n, b, -1).mean(0))
        return torch.cat(outs, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ms_aug:
            cls = self._multiscale(x)
            if self.with_head:
                cls = self.vision_head(cls[:, :self.dim])
        else:
            cls = self.beit3(x)[:, 0]
            if self.with_head:
                cls = self.vision_head(cls)
        return F.normalize(cls, dim=-1) if self.out_norm else cls


@register_family("musk")
def build(spec: ExtractorSpec, with_head: bool = False, out_norm: bool = False,
          ms_aug: bool = True) -> Built:
    b = dict(spec.build)
    model = MUSKVision(img=int(b.get("img_size", spec.input_px)), patch=int(b["patch"]),
                       dim=int(b["embed_dim"]), depth=int(b["depth"]), heads=int(b["heads"]),
                       hidden=int(b["ffn_dim"]), eps=float(b.get("ln_eps", 1e-5)),
                       with_head=bool(with_head), out_norm=bool(out_norm),
                       ms_aug=bool(ms_aug))
    # ms_aug is always recorded: bags made before it became the default (1024-d) then fail
    # the num_features check loudly instead of rebuilding into another feature
    config = {"ms_aug": bool(ms_aug)}
    config.update({k: True for k, v in (("with_head", with_head), ("out_norm", out_norm))
                   if v})
    info = {"config": config}
    if spec.dim is not None and model.num_features != spec.dim:
        info["spec"] = spec.with_(dim=model.num_features)
    return Built(model=model, layers_root=model.beit3, info=info)
