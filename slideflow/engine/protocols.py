"""What the engine needs from the objects handed to it, as structural types.

The model layer's extractors (`slideflow.model.extractors.base.FeatureExtractor`, Slideflow
3's classes, a plugin's own object) satisfy `Extractor` without importing the engine; the
engine never imports the model classes to type them, so the arrow stays one-way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Extractor(Protocol):
    """A tile feature extractor, as the streaming loop drives it (`BatchRunner`):
    `preprocess` takes a (B, 3, H, W) uint8 tensor on `device`, `forward_preprocessed`
    returns (B, num_features) features.

    `batch_size` is its default model batch (a run may pass another as an argument: the
    engine never writes it onto the object); on CUDA `device` also decodes the tiles. Bags
    record `spec`/`dump_config()`, `weights_sha256`, `precision` and `license` when present.
    """

    name: str
    num_features: int
    batch_size: int
    device: Any

    def preprocess(self, x: Any) -> Any: ...

    def forward_preprocessed(self, x: Any) -> Any: ...
