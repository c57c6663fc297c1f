"""Inference-time Conv+BatchNorm folding for CNN extractors on CPU.

Profiling `efficientnet_lite0_imagenet` on this 2-core CPU showed ~20% of the forward pass in
eval-mode BatchNorm, an affine map that can be folded into the preceding convolution's weights.
Folding is done on a copy of the model (the original keeps the checkpoint's layout for
`state_dict()`), and the folded copy is accepted only if it reproduces the original's output on a
probe batch, so an architecture whose module order does not follow its data flow is left alone.
The probe is small (64 px; the input size at which the model runs only if it refuses 64 px);
models of ours whose class says `bn_fold_safe = True` (tested against an unfolded run) skip it.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger("slideflow")

SMALL_PROBE_PX = 64


def _replacement(bn: nn.Module) -> nn.Module:
    """What stays of a BatchNorm after folding: timm's fused activation (and dropout), if any."""
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter(bias * scale + shift)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            and bn.running_var is not None and conv.out_channels == bn.num_features)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm registered right after a Conv2d in the same parent (in place).

    Returns how many pairs were folded. Only valid in eval mode.
    """
    count = 0
    for parent in list(model.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if _foldable(conv, bn):
                _fold(conv, bn)
                parent._modules[b] = _replacement(bn)
                count += 1
    return count


def folded_copy(model: nn.Module, probe_px: int = 224, atol: float = 1e-3) -> nn.Module:
    """A BatchNorm-folded copy of `model` when it verifiably computes the same; else `model`."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "meta":
        return model
    fused = copy.deepcopy(model).eval()
    if fold_batchnorm(fused) == 0:
        return model
    if getattr(model, "bn_fold_safe", False):
        return fused  # registration order is the data flow by construction (tested): no probe
    # the check is about the folded arithmetic, not the input size: probe small first (a
    # ResNet50 probe at 224 px cost more than the rest of the build), at probe_px if the
    # model refuses small inputs
    for px in dict.fromkeys((min(SMALL_PROBE_PX, probe_px), probe_px)):
        probe = torch.randn(2, 3, px, px, generator=torch.Generator().manual_seed(0))
        try:
            with torch.inference_mode():
                ref, out = model(probe.to(device)), fused(probe.to(device))
            break
        except Exception as exc:  # noqa: BLE001 - the unfolded model is always a safe answer
            err = exc
    else:
        log.info("BatchNorm folding probe failed for %s (%s); running it unfolded",
                 type(model).__name__, err)
        return model
    scale = float(ref.abs().max()) or 1.0
    if ref.shape != out.shape or float((ref - out).abs().max()) > atol * scale:
        log.info("BatchNorm folding changed the output of %s; running it unfolded",
                 type(model).__name__)
        return model
    return fused
