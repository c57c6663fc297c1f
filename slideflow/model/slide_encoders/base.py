"""The runtime slide encoder: a built module plus what it needs from the tile stage.

``enc(features (N, D), coords (N, 2) level-0 top-left px, patch_size_level0=None)`` returns one
(num_features,) vector: numpy in, numpy out; torch in, torch out (on the input's device).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import hooks
from ...errors import TileMismatchError
from .spec import SlideEncoderSpec

log = logging.getLogger(__name__)

SLIDE_ENCODER_CLASS = "slideflow.model.SlideEncoder"


class SlideEncoder:
    """A built slide encoder (see `build_slide_encoder`)."""

    def __init__(self, spec: SlideEncoderSpec, module: nn.Module, *, device: torch.device,
                 pretrained: bool, weights_source: str, weights_sha256: str | None,
                 config_kwargs: dict[str, Any], mixed_precision: bool = False):
        self.spec = spec
        self.name = spec.name
        self.model = module
        self.device = device
        self.pretrained = pretrained
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256
        self.license = spec.license
        self.citation = spec.citation
        self._config_kwargs = dict(config_kwargs)
        self._autocast = (torch.float16 if mixed_precision and device.type == "cuda" else None)

    @property
    def tile_extractor(self) -> str | None:
        """Registry name of the tile extractor whose features this encoder reads."""
        return self.spec.tile_extractor

    @property
    def tile_features(self) -> int | None:
        return self.spec.tile_features

    @property
    def num_features(self) -> int | None:
        """Width of the embedding (None for 'mean' until it has seen tile features)."""
        return self.spec.dim

    def output_dim(self, tile_dim: int) -> int:
        return int(self.spec.dim if self.spec.dim is not None else tile_dim)

    def __repr__(self) -> str:
        w = self.weights_source if self.pretrained else "RANDOM INIT (pretrained=False)"
        return (f"<SlideEncoder {self.name}: {self.num_features or 'tile'}-d from "
                f"{self.tile_extractor or 'any'} tile features, weights {w}, licence "
                f"{self.license}>")

    def check_features(self, num_tile_features: int, where: str = "") -> None:
        need = self.spec.tile_features
        if need is not None and int(num_tile_features) != int(need):
            raise TileMismatchError(
                f"{where + ': ' if where else ''}{self.name} reads {need}-d tile features "
                f"({self.tile_extractor}), got {num_tile_features}-d; generate bags with "
                f"extractor {self.tile_extractor!r}")

    def __call__(self, features: Any, coords: Any = None, patch_size_level0: int | None = None
                 ) -> Any:
        as_numpy = not isinstance(features, torch.Tensor)
        f = torch.as_tensor(np.asarray(features, np.float32) if as_numpy else features)
        if f.ndim == 3 and f.shape[0] == 1:
            f = f[0]
        if f.ndim != 2 or f.shape[0] == 0:
            raise ValueError(f"{self.name}: expected tile features (N, D) with N >= 1, got "
                             f"{tuple(f.shape)}")
        self.check_features(f.shape[1])
        c = None
        if coords is not None:
            c = torch.as_tensor(np.asarray(coords) if not isinstance(coords, torch.Tensor)
                                else coords).to(torch.int64)
            if c.ndim == 3 and c.shape[0] == 1:
                c = c[0]
            if c.shape != (f.shape[0], 2):
                raise ValueError(f"{self.name}: coords must be ({f.shape[0]}, 2), got "
                                 f"{tuple(c.shape)}")
            c = c.to(self.device)
        elif self.spec.positional != "none":
            raise ValueError(f"{self.name} places tiles by position: pass coords (N, 2) "
                             "level-0 top-left pixels and patch_size_level0")
        out_device = f.device
        with torch.inference_mode(), self._amp():
            out = self.model(f.to(self.device, torch.float32), c, patch_size_level0)
        out = out.float().reshape(-1)
        return out.cpu().numpy() if as_numpy else out.to(out_device)

    def aggregate(self, slide_embeddings: Any) -> np.ndarray:
        """A patient embedding from this encoder's slide embeddings (S, D): the model's own
        patient stage for patient-level encoders (MOOZY's case transformer), else the mean."""
        v = np.asarray(slide_embeddings, np.float32)
        if v.ndim != 2 or len(v) == 0:
            raise ValueError(f"{self.name}: expected slide embeddings (S, D) with S >= 1, got "
                             f"{v.shape}")
        stage = getattr(self.model, "aggregate", None)
        if stage is None:
            return v.mean(axis=0)
        with torch.inference_mode(), self._amp():
            out = stage(torch.from_numpy(v).to(self.device))
        return out.float().reshape(-1).cpu().numpy()

    def _amp(self):
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def dump_config(self) -> dict[str, Any]:
        """``{"class", "kwargs"}`` that `rebuild_slide_encoder` turns back into this encoder."""
        return {"class": SLIDE_ENCODER_CLASS, "kwargs": dict(self._config_kwargs)}

    def generate_and_save(self, bags: str | os.PathLike | list, outdir: str | os.PathLike, *,
                          overwrite: bool = False, **kwargs: Any):
        """Slideflow's spelling: embed every bag of a folder (or a list of bag files) into
        ``outdir/<slide>.pt`` (``fmt='h5'``: ``slide_features/<name>`` in ``<slide>.h5``)."""
        if isinstance(bags, (list, tuple)):
            bags = [Path(b) for b in bags]
        return hooks.call("embed_bag_folder", bags, self, outdir, overwrite=overwrite, **kwargs)
