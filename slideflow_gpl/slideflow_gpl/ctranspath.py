"""CTransPath architecture: Swin-T (patch 4, window 7, depths 2-2-6-2, heads 3-6-12-24) whose
patch embedding is a small convolutional stem.

Written for slideflow so that the published checkpoint (``checkpoint['model']``) loads with
the same tensor names: ``patch_embed.proj.{0,1,3,4,6}``, ``patch_embed.norm``,
``layers.<i>.blocks.<j>.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,
mlp.fc1,mlp.fc2}``, ``layers.<i>.downsample.{norm,reduction}``, ``norm``. The relative position
index and the shifted-window attention masks are derived from the geometry and kept out of
the state dict (checkpoints that carry them have them ignored).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slideflow.model.extractors.base import Built
from slideflow.model.extractors.spec import ExtractorSpec


class ConvStem(nn.Module):
    """3x3/s2 conv-BN-ReLU twice, then a 1x1 conv to the embedding width; output (B, H*W, C)."""

    def __init__(self, embed_dim: int = 96):
        super().__init__()
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, 1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


def _relative_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)       # 2, W*W
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)     # W*W, W*W, 2
    rel = rel + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window*window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _unwindows(x: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads = heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _relative_index(window),
                             persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)        # 1, heads, n, n
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask[None, :, None]).expand(bw // nw, -1, -1, -1, -1)
            bias = bias.reshape(bw, self.heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int,
                 shift: int):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:  # the window covers the whole map: no shift
            window, shift = min(resolution), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(4 * dim, dim))
        self.register_buffer("attn_mask", self._mask() if shift else None, persistent=False)

    def _mask(self) -> torch.Tensor:
        h, w = self.resolution
        win, s = self.window, self.shift
        region = torch.zeros(1, h, w, 1)
        label = 0
        for hs in (slice(0, -win), slice(-win, -s), slice(-s, None)):
            for ws in (slice(0, -win), slice(-win, -s), slice(-s, None)):
                region[:, hs, ws, :] = label
                label += 1
        ids = _windows(region, win).squeeze(-1)                          # nW, win*win
        diff = ids[:, None, :] - ids[:, :, None]
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(_windows(y, self.window), self.attn_mask)
        y = _unwindows(y, self.window, b, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int]):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class Stage(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int,
                 window: int, merge: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2)
            for i in range(depth))
        self.downsample = PatchMerging(dim, resolution) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class CTransPath(nn.Module):
    def __init__(self, img_size: int = 224, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), heads: tuple[int, ...] = (3, 6, 12, 24),
                 window: int = 7):
        super().__init__()
        self.img_size = img_size
        self.patch_embed = ConvStem(embed_dim)
        grid = img_size // 4
        stages = []
        for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
            res = (grid // 2 ** i, grid // 2 ** i)
            stages.append(Stage(embed_dim * 2 ** i, res, depth, h, window,
                                merge=i < len(depths) - 1))
        self.layers = nn.Sequential(*stages)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"CTransPath expects {self.img_size}x{self.img_size} inputs, got "
                             f"{tuple(x.shape[-2:])}")
        tokens, _ = self.patch_embed(x)
        return self.norm(self.layers(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x).mean(dim=1)


def build(spec: ExtractorSpec, **kwargs) -> Built:
    if kwargs:
        raise TypeError(f"{spec.name} takes no model options, got {sorted(kwargs)}")
    net = CTransPath(img_size=spec.input_px)
    return Built(model=net, layers_root=net)
