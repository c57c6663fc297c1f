"""BatchNorm folding: same outputs, and refused when module order lies about the data flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slideflow as sf
from slideflow.model.extractors.fuse import fold_batchnorm, folded_copy


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["resnet50_imagenet", "resnet18_imagenet", "densenet121_imagenet",
                                  "efficientnet_b0_imagenet"])
def test_folding_preserves_outputs(name):
    ext = sf.build_feature_extractor(name, pretrained=False)
    model = ext.model.eval()
    _randomise_bn(model)
    fused = folded_copy(model, probe_px=96)
    assert fused is not model
    def count(mod):
        return sum(isinstance(m, nn.BatchNorm2d) for m in mod.modules())

    # every BN that follows a conv is folded; DenseNet's pre-activation BNs stay
    assert count(fused) < count(model) and (count(fused) == 0) == (name != "densenet121_imagenet")
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        ref, out = model(x), fused(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_embedded_default_runs_folded():
    ext = sf.build_feature_extractor("efficientnet_lite0_imagenet")
    assert ext._runner is not ext.model
    assert "bn1.weight" in ext.state_dict() or any(k.endswith("bn1.weight")
                                                   for k in ext.state_dict())


class _Misordered(nn.Module):
    """Registers conv then bn, but applies bn to the input before the conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_misordered_modules_are_left_unfolded():
    m = _Misordered().eval()
    _randomise_bn(m)
    assert fold_batchnorm(_Misordered()) == 1  # the naive rule would fold it...
    assert folded_copy(m, probe_px=16) is m    # ...but the probe catches the difference


class _FixedSize(nn.Module):
    """Conv + BN that only accepts its own input size (as a model with fixed embeddings)."""

    def __init__(self, px: int):
        super().__init__()
        self.px = px
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.shape[-1] != self.px:
            raise ValueError(f"input must be {self.px} px")
        return self.bn(self.conv(x)).mean((2, 3))


def test_probe_is_small_and_falls_back_to_the_models_size():
    """The check probes at 64 px (cheap); a model refusing that is probed at probe_px."""
    m = _FixedSize(96).eval()
    _randomise_bn(m)
    fused = folded_copy(m, probe_px=96)
    assert fused is not m and not any(isinstance(x, nn.BatchNorm2d) for x in fused.modules())
    seen = []
    m64 = _FixedSize(64).eval()
    m64.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[-1]))
    # one 64-px probe each through the model and its folded copy (the hook is copied too)
    assert folded_copy(m64, probe_px=224) is not m64 and seen == [64, 64]
    assert folded_copy(_FixedSize(50).eval(), probe_px=96) is not None  # refuses both: unfolded
