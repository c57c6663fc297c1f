"""Feature extractors: specs (data), the registry, and the families that build models.

Importing this package does not import torch; building an extractor does.
"""

from __future__ import annotations

from .factory import build_feature_extractor
from .registry import (
    get_spec,
    list_extractors,
    load_plugin,
    refresh,
    register_extractor,
    unregister_extractor,
)
from .sf3 import register_torch, unregister_torch
from .spec import EXTRACTOR_CLASS, ExtractorSpec, WeightsSource, hf

__all__ = [
    "EXTRACTOR_CLASS", "ExtractorSpec", "WeightsSource", "build_feature_extractor", "get_spec",
    "hf", "list_extractors", "load_plugin", "rebuild_extractor", "refresh",
    "register_extractor", "register_torch", "unregister_extractor", "unregister_torch",
]


def __getattr__(name: str):
    if name == "rebuild_extractor":
        from .rebuild import rebuild_extractor

        return rebuild_extractor
    if name == "FeatureExtractor":
        from .base import FeatureExtractor

        return FeatureExtractor
    if name == "TorchFeatureExtractor":
        from ._factory_torch import TorchFeatureExtractor

        return TorchFeatureExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
