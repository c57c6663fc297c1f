"""slide2vec's Python API on slideflow's engine (`slideflow.engine.embed`, `generate_feature_bags`).

    from slideflow.compat.slide2vec import Model, Pipeline, PreprocessingConfig, ExecutionOptions
    model = Model.from_preset("prism")            # slide2vec presets and slideflow's names
    slide = model.embed_slide("a.svs")            # EmbeddedSlide, torch tensors
    result = Pipeline(model=model, preprocessing=PreprocessingConfig(
        requested_spacing_um=0.5, requested_tile_size_px=224),
        execution=ExecutionOptions(output_dir="out")).run(manifest_path="slides.csv")

    from slideflow.compat.slide2vec.encoders import encoder_registry
    encoder = encoder_registry.require("lunit")().to("cuda")   # dense / attention outputs

`config` converts slide2vec's settings, `api` runs them, `encoders` gives its low-level encoder
methods (`get_dense_transform`, `encode_tiles_dense`, `encode_tiles_attention`) over a
slideflow ViT extractor's `dense()` / `attention()`.
"""

from __future__ import annotations

from .api import (
    PRESETS,
    EmbeddedPatient,
    EmbeddedSlide,
    Model,
    Pipeline,
    RunResult,
    TileEmbeddingArtifact,
)
from .config import ExecutionOptions, PreprocessingConfig

__all__ = ["PRESETS", "EmbeddedPatient", "EmbeddedSlide", "ExecutionOptions", "Model",
           "Pipeline", "PreprocessingConfig", "RunResult", "TileEmbeddingArtifact"]
