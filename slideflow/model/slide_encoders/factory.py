"""`build_slide_encoder` (name -> ready `SlideEncoder`) and its safe rebuild from a config."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ...errors import UnsafeConfigError
from .registry import get_slide_spec, resolve_builder

log = logging.getLogger(__name__)


def build_slide_encoder(name: str, weights: str | os.PathLike | None = None,
                        pretrained: bool = True, device: Any = None, *, seed: int = 0,
                        mixed_precision: bool = False, **model_kwargs: Any):
    """Build a registered slide encoder.

    Args:
        name: registry name or alias (``slideflow.list_slide_encoders()``).
        weights: a local checkpoint file or folder, or ``'hf:org/repo[/file]'``; None uses
            the spec's default source (Hugging Face cache, honouring HF_HUB_OFFLINE).
        pretrained: False builds a seeded random initialisation (and says so everywhere).
        device: torch device (default CUDA if available, else CPU).
        mixed_precision: fp16 autocast on CUDA (fp32 otherwise).
        **model_kwargs: architecture options of the family (unknown names are errors).
    """
    from ..quiet import quiet_tqdm_import

    quiet_tqdm_import()
    import torch

    from ..extractors import weights as W
    from .base import SlideEncoder

    spec = get_slide_spec(name)
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    builder = resolve_builder(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = builder(spec, **model_kwargs)
    has_params = any(True for _ in module.state_dict())
    sha, source = None, "none (no parameters)"
    resolved = None
    if has_params and (weights is not None or pretrained):
        resolved = W.resolve(spec, weights)
        sd = (read_parts(resolved.paths, spec.checkpoint_parts) if spec.checkpoint_parts
              else W.read_state_dict(resolved.paths, spec))
        if hasattr(module, "canonicalize_state_dict"):  # e.g. names of shared blocks
            sd = module.canonicalize_state_dict(sd)
        W.load_strict(module, sd, expected_missing=spec.expected_missing,
                      expected_unexpected=spec.expected_unexpected, source=resolved.source)
        sha, source = resolved.digest, resolved.source
    elif has_params:
        source = "random init (pretrained=False)"
        log.warning("%s: RANDOM weights (pretrained=False); embeddings are not meaningful",
                    spec.name)
    module.eval().to(dev)
    for p in module.parameters():
        p.requires_grad_(False)
    config: dict[str, Any] = {"name": spec.name}
    if weights is not None:
        text = os.fspath(weights)
        config["weights"] = text if text.startswith("hf:") else os.path.abspath(text)
    if has_params and not pretrained and weights is None:
        config.update(pretrained=False, seed=seed)
    if model_kwargs:
        config["model_kwargs"] = dict(model_kwargs)
    return SlideEncoder(spec, module, device=dev, pretrained=resolved is not None or not has_params,
                        weights_source=source, weights_sha256=sha, config_kwargs=config,
                        mixed_precision=mixed_precision)


def read_parts(paths, parts) -> dict[str, Any]:
    """One state dict from checkpoints holding several (``{key: state dict, ...}``), each
    placed under its prefix; a missing part is an error naming it."""
    from ...errors import WeightsError
    from ..extractors.weights import read_checkpoint

    merged: dict[str, Any] = {}
    for path in paths:
        obj = read_checkpoint(path)
        for key, prefix in parts:
            sub = obj.get(key) if isinstance(obj, Mapping) else None
            if not isinstance(sub, Mapping):
                raise WeightsError(f"{path}: no state dict under {key!r} (expected keys "
                                   f"{[k for k, _ in parts]})")
            merged.update({prefix + k: v for k, v in sub.items()})
    return merged


_REBUILD_KEYS = {"name", "weights", "pretrained", "seed", "model_kwargs"}


def rebuild_slide_encoder(config: Mapping[str, Any], device: Any = None):
    """Rebuild a slide encoder from its `dump_config()`; only registered names are built, so
    a config file cannot make slideflow import arbitrary code."""
    from .base import SLIDE_ENCODER_CLASS

    if not isinstance(config, Mapping) or config.get("class") != SLIDE_ENCODER_CLASS:
        raise UnsafeConfigError(f"not a slide-encoder config (class must be "
                                f"{SLIDE_ENCODER_CLASS!r}): {dict(config) if isinstance(config, Mapping) else config!r}")
    kwargs = dict(config.get("kwargs") or {})
    unknown = set(kwargs) - _REBUILD_KEYS
    if unknown:
        raise UnsafeConfigError(f"slide-encoder config has unknown keys {sorted(unknown)}")
    return build_slide_encoder(kwargs["name"], weights=kwargs.get("weights"),
                               pretrained=kwargs.get("pretrained", True), device=device,
                               seed=int(kwargs.get("seed", 0)),
                               **dict(kwargs.get("model_kwargs") or {}))
