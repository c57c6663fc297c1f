"""The runtime extractor object and the module wrappers shared by the families.

`FeatureExtractor` is the contract with the streaming engine (`slideflow.pipeline`):
``preprocess`` (uint8 NCHW on ``device`` -> float32 NCHW), ``forward_preprocessed``
(-> float32 (N, D)), ``embed`` (numpy/tensor batches -> numpy, pipelined by `runner`) and
``__call__`` (arrays here; a WSI or a ``.tfrecords`` path goes to the engine through
`slideflow.hooks`), plus the attributes the engine and the bag writer read.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import InvalidArgumentError
from ...hooks import call_input_handlers
from ...validate import positive_int
from ..slide_encoders.factory import build_slide_encoder
from ..slide_encoders.registry import paired_slide_encoder
from .cpu_precision import choose_cpu_precision
from .fuse import folded_copy
from .preprocess import Preprocess
from .runner import BatchRunner, as_nchw_uint8
from .spec import EXTRACTOR_CLASS, ExtractorSpec
from .vit_outputs import attention, dense

log = logging.getLogger(__name__)


@dataclass
class Built:
    """What a family builder returns.

    ``model`` receives the weights (its state dict matches the converted checkpoint);
    ``features`` maps a normalised float NCHW batch to (N, D) and shares ``model``'s
    parameters (defaults to ``model``); ``convert`` turns a raw checkpoint state dict into
    ``model``'s key space; ``layers_root`` is the module whose submodule names ``layers=``
    refers to (defaults to ``model``).
    """

    model: nn.Module
    features: nn.Module | None = None
    convert: Any = None
    layers_root: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


class _StopForward(Exception):
    pass


class LayerFeatures(nn.Module):
    """Activations of named submodules, pooled and concatenated (Slideflow's ``layers=``).

    4-D outputs (N, C, H, W) are pooled over H, W ('avg' or 'max') or flattened (None);
    3-D token outputs (N, T, C) are pooled over tokens or flattened. The forward pass stops
    after the last requested layer.
    """

    def __init__(self, root: nn.Module, layers: Sequence[str], pooling: str | None = "avg"):
        super().__init__()
        if pooling not in ("avg", "max", None):
            raise ValueError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
        modules = dict(root.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            names = [n for n in modules if n and n.count(".") <= 1]
            raise ValueError(f"unknown layers {unknown}; available: {names[:60]}")
        self.root = root
        self.layers = list(layers)
        self.pooling = pooling
        self._outputs: dict[str, torch.Tensor] = {}
        self._order = {name: i for i, name in enumerate(self.layers)}
        for name in self.layers:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self._outputs[name] = output
            if len(self._outputs) == len(self.layers):
                raise _StopForward
        return hook

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 4:
            if self.pooling == "avg":
                return t.float().mean(dim=(2, 3))
            if self.pooling == "max":
                return t.float().amax(dim=(2, 3))
            return t.float().flatten(1)
        if t.ndim == 3:
            if self.pooling == "avg":
                return t.float().mean(dim=1)
            if self.pooling == "max":
                return t.float().amax(dim=1)
            return t.float().flatten(1)
        return t.float().flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._outputs = {}
        try:
            self.root(x)
        except _StopForward:
            pass
        outs = self._outputs
        self._outputs = {}
        missing = [n for n in self.layers if n not in outs]
        if missing:
            raise RuntimeError(f"layers {missing} were not reached by the forward pass")
        return torch.cat([self._pool(outs[n]) for n in self.layers], dim=1)


def _device(device: Any) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return check_device(device)


def check_device(device: Any) -> torch.device:
    """`device` as a torch.device that exists here, else InvalidArgumentError saying what is
    there (checked before any model is built: 'cuda:7' on a 2-GPU node, CUDA without GPUs)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"device {device!r}: {exc}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidArgumentError(f"device {device!r}: no CUDA device is available here; "
                                       "use 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise InvalidArgumentError(f"device {device!r}: this machine has {count} CUDA "
                                       f"device(s), cuda:0..cuda:{count - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError(f"device {device!r}: MPS is not available here; use 'cpu'")
    return dev


class FeatureExtractor:
    """A built extractor: preprocessing + model, ready for batches, WSIs and TFRecords."""

    def __init__(self, spec: ExtractorSpec, module: nn.Module, preprocess: Preprocess, *,
                 num_features: int, device: torch.device, batch_size: int,
                 mixed_precision: bool | str | None, channels_last: bool | None,
                 weights_source: str, weights_sha256: str | None,
                 weights_files: dict[str, str] | None, pretrained: bool,
                 config_kwargs: dict[str, Any], backbone: nn.Module | None = None):
        self.spec = spec
        self.name = spec.name
        self.model = module
        self.backbone = backbone if backbone is not None else module
        self._preprocess = preprocess
        self.num_features = int(num_features)
        self.device = device
        self.batch_size = batch_size
        self.license = spec.license
        self.citation = spec.citation
        self.pretrained = pretrained
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256
        self.weights_files = dict(weights_files or {})
        self._config_kwargs = dict(config_kwargs)
        self.precision, self._autocast_dtype = self._choose_precision(mixed_precision)
        self.channels_last = bool(spec.cnn if channels_last is None else channels_last)
        if self.channels_last and device.type != "meta":
            self.model.to(memory_format=torch.channels_last)
        # what forward passes run: BatchNorm folded into convolutions where that verifiably
        # gives the same output; `model` keeps the checkpoint's layout for state_dict() users
        self._runner = self.model
        if device.type != "meta" and not any(m._forward_hooks for m in module.modules()):
            self._runner = folded_copy(self.model, probe_px=preprocess.input_px)
        self.precision_note: str | None = None
        if mixed_precision == "auto" and device.type == "cpu":
            self.precision, self.precision_note = choose_cpu_precision(self)
            self._autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None

    # ------------------------------------------------------------------ attributes
    def _choose_precision(self, mixed: bool | str | None) -> tuple[str, torch.dtype | None]:
        if self.device.type != "cuda":  # 'auto' on the CPU is settled once the model is built
            if mixed not in (None, False, "fp32", "auto"):
                log.info("%s: mixed precision is only used on CUDA; running fp32 on %s",
                         self.name, self.device.type)
            return "fp32", None
        if mixed in (False, "fp32"):
            return "fp32", None
        if mixed == "fp16":
            return "fp16", torch.float16
        if mixed in (None, True, "bf16", "auto"):
            if mixed == "bf16" or torch.cuda.is_bf16_supported():
                return "bf16", torch.bfloat16
            return "fp16", torch.float16
        raise ValueError(f"mixed_precision must be None, a bool, 'auto', 'bf16', 'fp16' or 'fp32', "
                         f"not {mixed!r}")

    @property
    def batch_size(self) -> int:
        """Tiles per forward pass; an integer >= 1 (0 would loop forever in the engine)."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: Any) -> None:
        self._batch_size = positive_int(value, "batch_size")

    @property
    def input_px(self) -> int:
        return self._preprocess.input_px

    @property
    def transform(self) -> Preprocess:
        """The preprocessing pipeline (printable)."""
        return self._preprocess

    # -------------------------------------------------------------- two-stage / ViT outputs
    @property
    def tile(self) -> FeatureExtractor:
        """This tile extractor (Slideflow's ``gigapath.tile`` spelling)."""
        return self

    @property
    def slide(self):
        """The slide encoder paired with this tile extractor (built on first use)."""
        if getattr(self, "_slide", None) is None:
            spec = paired_slide_encoder(self.name)
            if spec is None:
                raise AttributeError(f"{self.name}: no slide encoder is paired with this tile "
                                     "extractor; use slideflow.build_slide_encoder(name)")
            self._slide = build_slide_encoder(spec.name, device=self.device)
        return self._slide

    def dense(self, batch: Any, *, preprocessed: bool = False) -> np.ndarray:
        """(B, D, h, w) patch tokens of a ViT extractor (see `vit_outputs.dense`)."""
        return dense(self, batch, preprocessed=preprocessed)

    def attention(self, batch: Any, blocks: Sequence[int] = (-1,), *,
                  include_registers: bool = False, preprocessed: bool = False) -> np.ndarray:
        """(B, heads, h, w) class-token attention, exact under fused kernels
        (see `vit_outputs.attention`)."""
        return attention(self, batch, blocks, include_registers=include_registers,
                         preprocessed=preprocessed)

    def __repr__(self) -> str:
        weights = self.weights_source if self.pretrained else "RANDOM INIT (pretrained=False)"
        return (f"<FeatureExtractor {self.name}: {self.num_features}-d, input "
                f"{self.input_px}px, {self.precision} on {self.device}, weights {weights}, "
                f"licence {self.license}>")

    # ------------------------------------------------------------------ compute
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW on `device` -> float32 normalised NCHW."""
        return self._preprocess(x)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def forward_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, D) features of a preprocessed batch."""
        with torch.inference_mode():
            if x.ndim == 4:  # one layout for the model: NHWC memory for CNNs, else NCHW
                x = x.contiguous(memory_format=torch.channels_last if self.channels_last
                                 else torch.contiguous_format)
            with self._autocast():
                out = self._runner(x)
            if out.ndim != 2:
                out = out.flatten(1)
            return out.float()

    def embed(self, batch: Any, batch_size: int | None = None) -> np.ndarray:
        """float32 (N, D) numpy features of uint8 tiles (NHWC numpy, or NCHW/NHWC tensor)."""
        x = as_nchw_uint8(batch)
        n = x.shape[0]
        out = np.empty((n, self.num_features), np.float32)
        step = self.batch_size if batch_size is None else positive_int(batch_size, "batch_size")
        chunks = ((x[start:start + step], start) for start in range(0, n, step))
        for feats, start in BatchRunner(self).run(chunks):
            out[start:start + len(feats)] = feats
        return out

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        """Features of uint8 tiles (numpy/tensor batch); a WSI or a ``.tfrecords`` path is
        handed to the engine through `slideflow.hooks` (the model layer knows arrays only)."""
        if isinstance(x, (np.ndarray, torch.Tensor)):
            return self.embed(x, **kwargs)
        result = call_input_handlers(self, x, **kwargs)
        if result is NotImplemented:
            raise TypeError(f"{self.name}: expected tiles (numpy/tensor), a WSI or a "
                            f".tfrecords path, got {type(x).__name__}")
        return result

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the layout ``weights=`` accepts (save with torch.save or
        safetensors, rebuild with ``build_feature_extractor(name, weights=path)``)."""
        return self.backbone.state_dict()

    # ------------------------------------------------------------------ config
    def dump_config(self) -> dict[str, Any]:
        """JSON-serialisable ``{"class", "kwargs"}`` that `rebuild_extractor` turns back into
        an identical extractor (registry name, weights, preprocessing and layer options)."""
        return {"class": EXTRACTOR_CLASS, "kwargs": _jsonable(dict(self._config_kwargs))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot record {type(value).__name__} value {value!r} in the extractor "
                    "config; pass JSON-serialisable options")

