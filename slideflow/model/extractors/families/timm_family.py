"""timm architectures: ImageNet models, ``timm:<name>``, and the timm-format pathology ViTs
(H-optimus-0, Virchow, UNI, Virchow2, Prov-GigaPath).

``spec.build``:
  ``timm``        timm model name given to ``timm.create_model`` (pretrained=False), or
  ``timm_class``  'VisionTransformer' to construct timm's class directly;
  ``kwargs``      constructor options; layer names are strings resolved here
                  ('swiglu_packed', 'glu_silu', 'silu', 'gelu');
  ``output``      'pooled' (default: the model's pooled pre-logits features, or the head's
                  output when ``kwargs`` sets ``num_classes``: CLIP's image projection, kept
                  as timm's head), 'cls' (the
                  class token after the final norm) or 'cls_mean' (class token concatenated
                  with the mean of the patch tokens, registers excluded, as Virchow);
                  ``build_feature_extractor(name, output=...)`` overrides it (e.g.
                  ``output='cls'`` gives Virchow's 1280-d class token alone);
  ``dynamic``     the spec came from 'timm:<name>': dim / input size / normalisation are read
                  from timm's pretrained config for that name.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..base import Built
from ..spec import ExtractorSpec
from . import register_family

OUTPUTS = ("pooled", "cls", "cls_mean")


def resolve_layer(name: Any) -> Any:
    """A timm layer class from its spec name (specs stay plain data); classes pass through."""
    if not isinstance(name, str):
        return name
    from timm.layers import GluMlp, SwiGLUPacked

    table = {
        "swiglu_packed": SwiGLUPacked,
        "glu_silu": functools.partial(GluMlp, act_layer=nn.SiLU, gate_last=False),
        "silu": nn.SiLU,
        "gelu": nn.GELU,
    }
    if name not in table:
        raise ValueError(f"unknown layer name {name!r}; expected one of {sorted(table)}")
    return table[name]


class ClsMeanFeatures(nn.Module):
    """Class token concatenated with the mean of the patch tokens (registers excluded)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.net.forward_features(x)
        cls = tokens[:, 0]
        patches = tokens[:, self.net.num_prefix_tokens:]
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)


class ClsFeatures(nn.Module):
    """Normalised class token (forward_features()[:, 0])."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)[:, 0]


@register_family("timm")
def build(spec: ExtractorSpec, **kwargs: Any) -> Built:
    import timm

    b = spec.build
    kwargs = dict(kwargs)
    requested = kwargs.pop("output", None)
    output = requested or b.get("output", "pooled")
    if output not in OUTPUTS:
        raise ValueError(f"{spec.name}: output must be one of {OUTPUTS}, not {output!r}")
    kw = dict(b.get("kwargs", {}))
    kw.update(kwargs)
    for key in ("mlp_layer", "act_layer"):
        if key in kw:
            kw[key] = resolve_layer(kw[key])
    if output in ("cls_mean", "cls"):
        kw.setdefault("global_pool", "")
    if b.get("timm_class") == "VisionTransformer":
        from timm.models.vision_transformer import VisionTransformer

        kw.setdefault("num_classes", 0)
        net = VisionTransformer(**kw)
    else:
        kw.setdefault("num_classes", 0)
        net = timm.create_model(b["timm"], pretrained=False, **kw)

    if output == "cls_mean":
        features: nn.Module = ClsMeanFeatures(net)
        dim = 2 * net.num_features
    elif output == "cls":
        features = ClsFeatures(net)
        dim = net.num_features
    elif kw["num_classes"]:  # the head is part of the feature (CLIP's projection)
        features = net
        dim = net.num_classes
    else:
        features = net
        dim = getattr(net, "head_hidden_size", None) or net.num_features

    config = dict(kwargs)
    if requested and requested != b.get("output", "pooled"):
        config["output"] = requested
    info: dict[str, Any] = {"config": config}
    if b.get("dynamic"):
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        size = cfg.get("input_size", (3, spec.input_px, spec.input_px))[-1]
        interp = cfg.get("interpolation", spec.interpolation)
        info["spec"] = spec.with_(
            dim=dim, input_px=int(kw.get("img_size", size)),
            mean=tuple(cfg.get("mean", spec.mean)), std=tuple(cfg.get("std", spec.std)),
            interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
            cnn=_is_cnn(net))
    elif spec.dim is not None and dim != spec.dim and not config:
        raise RuntimeError(f"{spec.name}: architecture gives {dim} features but the spec "
                           f"declares {spec.dim}")
    elif config and dim != spec.dim:
        info["spec"] = spec.with_(dim=dim)
    return Built(model=net, features=features, layers_root=net, info=info)


def _is_cnn(net: nn.Module) -> bool:
    return not any(isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "Attention"
                   for m in net.modules())
