"""torchvision models (ResNet, DenseNet, ConvNeXt, ViT): ImageNet extractors, SimCLR encoders,
RetCCL.

ResNets (and ResNeXt / Wide ResNet) are built by `.resnet` with torchvision's layout, so the
common ResNet50 job never imports torchvision; the others come from torchvision itself
(``spec.build['kwargs']`` goes to its constructor, e.g. ``image_size=518`` for ViT-H/14 SWAG).

The classifier is replaced by an identity, so the default features are the globally pooled
activations (ResNet-50: 2048-d; ConvNeXt: the pooled map flattened, before the classifier's
LayerNorm, as a whole-classifier swap gives; ViT: the class token after the final norm).
``layers=`` selects intermediate blocks by their torchvision names ('layer3', 'layer4',
'features.denseblock4', ...).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..base import Built
from ..spec import ExtractorSpec
from . import register_family, resnet

ARCHS = {  # arch -> (pooled feature dim, classifier attribute)
    "resnet18": (512, "fc"), "resnet34": (512, "fc"), "resnet50": (2048, "fc"),
    "resnet101": (2048, "fc"), "resnet152": (2048, "fc"), "wide_resnet50_2": (2048, "fc"),
    "resnext50_32x4d": (2048, "fc"), "densenet121": (1024, "classifier"),
    "densenet169": (1664, "classifier"), "densenet201": (1920, "classifier"),
    "convnext_small": (768, "classifier"), "convnext_base": (1024, "classifier"),
    "convnext_large": (1536, "classifier"), "vit_b_16": (768, "heads"),
    "vit_b_32": (768, "heads"), "vit_l_16": (1024, "heads"), "vit_l_32": (1024, "heads"),
    "vit_h_14": (1280, "heads"),
}
_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
# torchvision's pre-0.4 DenseNet checkpoints name 'norm.1' what is now 'norm1'
_DENSENET_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
    r"running_var))$")


@register_family("torchvision")
def build(spec: ExtractorSpec, arch: str | None = None, **kwargs) -> Built:
    if kwargs:
        raise TypeError(f"{spec.name}: unknown options {sorted(kwargs)} (torchvision family "
                        "takes arch=)")
    arch = arch or spec.build["arch"]
    if arch not in ARCHS:
        raise ValueError(f"{spec.name}: arch must be one of {sorted(ARCHS)}, not {arch!r}")
    dim, head = ARCHS[arch]
    if arch in resnet.ARCHS:  # same names and numbers, without importing torchvision
        net = resnet.resnet(arch)
    else:
        import torchvision

        own = arch == spec.build.get("arch")  # the spec's constructor options are its arch's
        net = getattr(torchvision.models, arch)(weights=None,
                                                **(spec.build.get("kwargs", {}) if own else {}))
    # ConvNeXt's pooled map is (N, C, 1, 1): flatten it where the classifier was
    setattr(net, head, nn.Flatten(1) if arch.startswith("convnext") else nn.Identity())
    info: dict = {}
    if arch != spec.build.get("arch"):
        info = {"spec": spec.with_(dim=dim), "config": {"arch": arch}}
    return Built(model=net, convert=lambda sd: convert(sd, arch), info=info)


def convert(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Deliberate, documented key fixes; anything else is left to the strict check."""
    if arch.startswith("densenet"):
        fixed = {}
        for k, v in sd.items():
            m = _DENSENET_OLD.match(k)
            fixed[m.group(1) + m.group(2) if m else k] = v
        return fixed
    if "conv1.weight" not in sd and "0.weight" in sd:
        # nn.Sequential(*list(resnet.children())[:-1]) encoders (common in SimCLR code)
        out = {}
        for k, v in sd.items():
            idx, _, rest = k.partition(".")
            if idx.isdigit() and int(idx) < len(_RESNET_CHILDREN):
                out[f"{_RESNET_CHILDREN[int(idx)]}.{rest}"] = v
            else:
                out[k] = v
        return out
    return sd
