"""Models: feature extractors (``slideflow.model.extractors``).

``import slideflow.model`` does not import torch: the registry answers what exists from plain
data, and torch is imported when an extractor is built.
"""

from __future__ import annotations

from typing import Any

from .extractors.factory import build_feature_extractor
from .extractors.registry import (
    get_spec,
    list_extractors,
    load_plugin,
    refresh,
    register_extractor,
    unregister_extractor,
)
from .extractors.spec import ExtractorSpec, WeightsSource

__all__ = [
    "ExtractorSpec", "FeatureExtractor", "WeightsSource", "build_feature_extractor",
    "get_spec", "list_extractors", "load_plugin", "rebuild_extractor", "refresh",
    "register_extractor", "unregister_extractor",
]


def __getattr__(name: str) -> Any:
    if name == "rebuild_extractor":
        from .extractors.rebuild import rebuild_extractor

        return rebuild_extractor
    if name == "FeatureExtractor":
        from .extractors.base import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
