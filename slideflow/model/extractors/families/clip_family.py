"""CLIP image towers in the Hugging Face transformers layout (PLIP).

Built from a `transformers.CLIPVisionConfig` written in the spec (no download, no remote
code); the checkpoint of a full ``CLIPModel`` loads strictly into
``CLIPVisionModelWithProjection`` (``vision_model.*``, ``visual_projection.weight``), the text
tower being ignored. Feature: ``get_image_features`` = the projected, post-LayerNorm class
token (``image_embeds``), not L2-normalised.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import Built
from ..spec import ExtractorSpec
from . import register_family

CLIP_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "image_size", "patch_size", "projection_dim", "hidden_act", "layer_norm_eps")


class ImageEmbeds(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).image_embeds


@register_family("clip")
def build(spec: ExtractorSpec) -> Built:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg: dict[str, Any] = {k: spec.build[k] for k in CLIP_KEYS}
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
    return Built(model=model, features=ImageEmbeds(model), layers_root=model)
