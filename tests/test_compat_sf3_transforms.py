"""`resize=` with `center_crop=` the Slideflow 3 way gives Slideflow 3's transform: CenterCrop,
then Resize (bilinear, no antialias), /255, Normalize; checked against torchvision's own ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slideflow as sf

torchvision = pytest.importorskip("torchvision")
T = torchvision.transforms


def _tiles(n: int = 3, px: int = 299) -> torch.Tensor:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (n, 3, px // 8, px // 8), dtype=np.uint8)
    up = torch.nn.functional.interpolate(torch.from_numpy(base).float(), size=(px, px),
                                         mode="bilinear", align_corners=False)
    return (up + torch.from_numpy(rng.integers(-20, 21, up.shape)).float()).clamp(0, 255).to(
        torch.uint8)


@pytest.mark.parametrize("interp, mode", [("bilinear", T.InterpolationMode.BILINEAR),
                                          ("bicubic", T.InterpolationMode.BICUBIC)])
def test_slideflow3_crop_then_resize_matches_torchvision(interp, mode):
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=5,
                                     resize=256, center_crop=224, interpolation=interp)
    x = _tiles()
    ref = T.Compose([T.CenterCrop(224), T.Resize(256, interpolation=mode, antialias=False)])(x)
    ref = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(ref.float() / 255.0)
    ours = ext.preprocess(x)
    assert ours.shape == ref.shape == (3, 3, 256, 256)
    # uint8 rounding of torchvision's resize is reproduced: at most one level apart
    assert float((ours - ref).abs().max()) <= 1.0 / (255 * 0.224) + 1e-5
    with torch.inference_mode():
        want = ext.model(ref).flatten(1).numpy()
    np.testing.assert_allclose(ext(x), want, rtol=1e-3, atol=1e-3)


def test_order_can_still_be_chosen():
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=256,
                                     center_crop=224, order="resize_crop", antialias=True,
                                     device="meta")
    assert (ext.transform.order, ext.transform.antialias) == ("resize_crop", True)
    assert ext.transform.output_size(299, 299) == (224, 224)
