"""Stain normalisation: Reinhard, Macenko and Vahadane, with Slideflow's names, presets and fits.

    >>> import slideflow as sf
    >>> norm = sf.norm.autoselect("macenko")              # fitted to preset "v3"
    >>> norm.fit(target_rgb)                                # or norm.fit_preset("v1")
    >>> tiles = norm.transform(tiles)                       # uint8 (N, H, W, 3) numpy
    >>> batch = norm.transform_torch(batch)                 # uint8 NCHW/NHWC tensor, its device
    >>> cfg = norm.to_config()                              # {"method": ..., "fit": {...}}
    >>> same = sf.norm.from_config(cfg)

Importing this package does not import torch; see docs/normalization.md.
"""

from __future__ import annotations

from typing import Any

from ..errors import NormalizerError
from .base import Normalizer
from .macenko import MacenkoNormalizer
from .presets import DEFAULT_PRESET, FIT_PRESETS
from .reinhard import ReinhardNormalizer
from .vahadane import VahadaneNormalizer

#: method name -> class
METHODS: dict[str, type[Normalizer]] = {
    "reinhard": ReinhardNormalizer,
    "reinhard_fast": ReinhardNormalizer,
    "reinhard_mask": ReinhardNormalizer,
    "reinhard_fast_mask": ReinhardNormalizer,
    "macenko": MacenkoNormalizer,
    "macenko_fast": MacenkoNormalizer,
    "vahadane": VahadaneNormalizer,
}

__all__ = [
    "DEFAULT_PRESET", "FIT_PRESETS", "METHODS", "MacenkoNormalizer", "Normalizer",
    "NormalizerError", "ReinhardNormalizer", "VahadaneNormalizer", "autoselect", "from_config",
    "list_methods", "resolve",
]


def list_methods() -> list[str]:
    return sorted(METHODS)


def autoselect(method: str, *, backend: str = "numpy", preset: str | None = None,
               **kwargs: Any) -> Normalizer:
    """A normaliser for `method`, fitted to `preset` (None: the method's default, as Slideflow:
    "v3", or "v2" for vahadane). `backend` ("numpy" or "torch") chooses what `.transform` runs
    on numpy input; `.transform_torch` always runs in torch on the tensor's device. Extra
    keyword arguments go to the method's class (e.g. ``threshold``, ``alpha``, ``beta``).
    """
    cls = METHODS.get(method)
    if cls is None:
        choices = ", ".join(list_methods())
        raise NormalizerError(
            f"unknown stain normalisation method {method!r}; choose from {choices}")
    return cls(method, backend=backend, preset=preset, **kwargs)


def resolve(normalizer: str | Normalizer | None) -> Normalizer | None:
    """What extraction and feature code accept as `normalizer=`: None, a method name (default
    preset), or any object with `.transform()` (a fitted normaliser)."""
    if normalizer is None:
        return None
    if isinstance(normalizer, str):
        return autoselect(normalizer)
    if not hasattr(normalizer, "transform"):
        raise TypeError("normalizer must be a method name or an object with .transform()")
    return normalizer


def from_config(cfg: dict[str, Any] | None, *, backend: str = "numpy") -> Normalizer | None:
    """Rebuild a normaliser from `Normalizer.to_config()` (or Slideflow's bags_config
    ``normalizer`` entry). None or {} gives None; a config without "fit" gets the default preset;
    "params" (non-default constructor parameters, ours) are passed to the constructor.
    """
    if not cfg:
        return None
    if not isinstance(cfg, dict) or "method" not in cfg:
        raise NormalizerError(f"a normaliser config needs a 'method' key, got {cfg!r}")
    norm = autoselect(cfg["method"], backend=backend, **(cfg.get("params") or {}))
    fit = cfg.get("fit")
    if fit:
        norm.set_fit(**fit)
    return norm
