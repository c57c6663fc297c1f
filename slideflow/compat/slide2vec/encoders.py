"""slide2vec's `encoder_registry` and its low-level encoder methods over slideflow extractors.

    from slideflow.compat.slide2vec.encoders import encoder_registry
    encoder = encoder_registry.require("lunit")().to("cuda")
    batch = encoder.get_dense_transform()(tile).unsqueeze(0).to(encoder.device)
    encoder.encode_tiles_dense(batch)        # (B, D, h, w)  = ext.dense(...)
    encoder.encode_tiles_attention(batch)    # (B, K, h, w)  = ext.attention(...)

`require(name)` takes slide2vec's preset names and slideflow's registry names and returns a
factory; calling it builds slideflow's extractor (keywords: slide2vec's `dynamic_img_size` and
`allow_non_recommended_settings`, and `build_feature_extractor`'s own, e.g. ``weights=``).
The dense transform is the extractor's normalisation without resize or crop, so tile geometry
is kept; the outputs are the extractor's `dense()` / `attention()` on those inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...model import build_feature_extractor, get_spec
from .. import report_once
from .api import PRESETS


class DenseTransform:
    """A PIL image or (H, W, 3) uint8 array -> normalised float (3, H, W) tensor, unresized."""

    def __init__(self, preprocess: Any):
        self.preprocess = dataclasses.replace(preprocess, resize=False, resize_px=None,
                                              center_crop=None)

    def __call__(self, image: Any) -> Any:
        import torch

        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise TypeError(f"expected an RGB image or (H, W, 3) uint8 array, got {arr.shape} "
                            f"{arr.dtype}")
        x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).unsqueeze(0)
        return self.preprocess(x)[0]

    def __repr__(self) -> str:
        return f"DenseTransform({self.preprocess.describe()})"


class Encoder:
    """slide2vec's tile-encoder object: a slideflow extractor built on first use."""

    def __init__(self, name: str, *, dynamic_img_size: bool | None = None,
                 allow_non_recommended_settings: bool = False, device: Any = None,
                 **build_kwargs: Any):
        self.name = name
        self._kwargs = dict(build_kwargs)
        if dynamic_img_size is not None:
            self._kwargs["dynamic_img_size"] = bool(dynamic_img_size)
        if allow_non_recommended_settings:
            report_once("slide2vec", "allow_non_recommended_settings=True: slideflow does not "
                                     "guard encoder settings; dynamic_img_size= is passed on")
        self._device = device
        self._ext: Any = None

    @property
    def extractor(self) -> Any:
        """slideflow's `FeatureExtractor` behind this encoder."""
        if self._ext is None:
            built = build_feature_extractor(self.name, device=self._device, **self._kwargs)
            self._ext = getattr(built, "tile", built)  # a tile + slide pair: its tile encoder
        return self._ext

    @property
    def device(self) -> Any:
        return self.extractor.device

    @property
    def encode_dim(self) -> int:
        return int(self.extractor.num_features)

    def to(self, device: Any) -> Encoder:
        """This encoder on `device` (built there; rebuilt if it was built elsewhere)."""
        import torch

        if self._ext is not None and self._ext.device == torch.device(device):
            return self
        self._device, self._ext = device, None
        _ = self.extractor
        return self

    def get_dense_transform(self) -> DenseTransform:
        return DenseTransform(self.extractor.transform)

    def encode_tiles_dense(self, batch: Any) -> Any:
        """(B, D, h, w) patch-token features of a normalised (B, 3, H, W) batch."""
        import torch

        self._check_size(batch)
        return torch.from_numpy(self.extractor.dense(batch, preprocessed=True))

    def encode_tiles_attention(self, batch: Any, *, blocks: Sequence[int] = (-1,),
                               include_registers: bool = False) -> Any:
        """(B, K, h, w) prefix-token attention, K = len(blocks) x (1 + registers) x heads,
        ordered [block][class, registers...][head]."""
        import torch

        self._check_size(batch)
        blocks = tuple(int(b) for b in blocks)
        out = self.extractor.attention(batch, blocks, include_registers=include_registers,
                                       preprocessed=True)
        if len(blocks) > 1:  # (B, blocks, K, h, w) -> block-outer channels
            out = out.reshape(out.shape[0], -1, *out.shape[-2:])
        return torch.from_numpy(out)

    def _check_size(self, batch: Any) -> None:
        net = getattr(self.extractor, "backbone", None)
        pe = getattr(net, "patch_embed", None)
        if pe is None or not hasattr(net, "blocks"):
            raise NotImplementedError(f"{self.name}: dense outputs need a ViT tile encoder; "
                                      "pooled features: ext(tiles)")
        h, w = (int(v) for v in batch.shape[-2:])
        patch = tuple(int(v) for v in pe.patch_size)
        if getattr(net, "dynamic_img_size", False):
            if h % patch[0] or w % patch[1]:
                raise ValueError(f"{self.name}: input {h}x{w} must be divisible by the patch "
                                 f"size {patch[0]}")
        elif (h, w) != tuple(int(v) for v in pe.img_size):
            raise ValueError(f"{self.name} runs at {tuple(pe.img_size)} only; pass "
                             "dynamic_img_size=True for other sizes")


class EncoderRegistry:
    """slide2vec's encoder registry: names resolve to slideflow's extractor registry."""

    def require(self, name: str) -> Callable[..., Encoder]:
        """A factory of the encoder `name` (slide2vec preset or slideflow name)."""
        spec = get_spec(PRESETS.get(str(name).lower(), name))
        return functools.partial(Encoder, spec.name)

    def __contains__(self, name: object) -> bool:
        try:
            get_spec(PRESETS.get(str(name).lower(), str(name)))
        except Exception:
            return False
        return True


encoder_registry = EncoderRegistry()

__all__ = ["DenseTransform", "Encoder", "EncoderRegistry", "encoder_registry"]
