"""Weights keep their dtype contract, are finite, and every file loaded is recorded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.errors import InvalidArgumentError, WeightsError

from .cases import hostile
from conftest import CMU

TILES = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sd():
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=1, resize=64)
    return {k: v.clone() for k, v in ext.model.state_dict().items()}, ext(TILES)


def _build(path, **kw):
    return sf.build_feature_extractor("resnet18_imagenet", weights=path, resize=64, **kw)


@hostile("weights-int8", "a checkpoint whose float tensors were saved as int8",
         "WeightsError naming the tensor and dtype (was cast silently, off by up to 5.5)")
def test_integer_weights_are_refused(sd, tmp_path):
    bad = {k: (v * 10).to(torch.int8) if v.is_floating_point() else v for k, v in sd[0].items()}
    torch.save(bad, tmp_path / "q.pth")
    with pytest.raises(WeightsError, match="torch.int8.*quantised"):
        _build(tmp_path / "q.pth")


@hostile("weights-nan", "a checkpoint with one NaN in a conv weight",
         "WeightsError 'non-finite values' naming the tensor (gave an all-NaN bag 'done')")
def test_nan_weights_are_refused(sd, tmp_path):
    bad = dict(sd[0])
    bad["conv1.weight"] = bad["conv1.weight"].clone()
    bad["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(bad, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="conv1.weight.*non-finite"):
        _build(tmp_path / "nan.pth")


@hostile("weights-float64", "float64 and fp16 checkpoints of a float32 model",
         "exact values load (identical features); float64 values beyond float32's range are "
         "refused")
def test_wider_and_narrower_floats(sd, tmp_path):
    torch.save({k: v.double() if v.is_floating_point() else v for k, v in sd[0].items()},
               tmp_path / "f64.pth")
    np.testing.assert_array_equal(_build(tmp_path / "f64.pth")(TILES), sd[1])
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd[0].items()}
    torch.save(half, tmp_path / "f16.pth")
    assert _build(tmp_path / "f16.pth").pretrained
    big = {k: v.double() if v.is_floating_point() else v for k, v in sd[0].items()}
    big["fc.weight" if "fc.weight" in big else "conv1.weight"] = \
        big["conv1.weight"].clone().fill_(1e300)
    big["conv1.weight"] = big["conv1.weight"].clone().fill_(1e300)
    torch.save(big, tmp_path / "huge.pth")
    with pytest.raises(WeightsError, match="overflow"):
        _build(tmp_path / "huge.pth")


@hostile("timm-checkpoint-path", "build_feature_extractor('timm:resnet18', "
         "checkpoint_path=file)", "loaded through the strict loader; sha256 and path recorded "
         "(reported random weights, no sha256)")
def test_timm_checkpoint_path_has_provenance(tmp_path):
    ref = sf.build_feature_extractor("timm:resnet18", pretrained=False, seed=2)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": ref.model.state_dict()}, path)
    ext = sf.build_feature_extractor("timm:resnet18", checkpoint_path=str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ext.pretrained and ext.weights_sha256 == sha
    assert ext.weights_files == {str(path): sha}
    tiles = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ext(tiles), ref(tiles))
    with pytest.raises(ValueError):
        sf.build_feature_extractor("timm:resnet18", pretrained=False, checkpoint_path=str(path))
    with pytest.raises(InvalidArgumentError, match="not both"):
        sf.build_feature_extractor("timm:resnet18", weights=path, checkpoint_path=str(path))


@hostile("nan-features", "an extractor whose output turns NaN after loading",
         "the slide fails ('feature rows hold NaN/inf'), no bag is written, the run goes on")
def test_nan_features_never_make_a_bag(tmp_path):
    from slideflow.features import generate_bags, jobs_from_paths

    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64,
                                     batch_size=8)
    forward = ext.forward_preprocessed
    ext.forward_preprocessed = lambda x: forward(x) * float("nan")  # diverged model
    report = generate_bags(jobs_from_paths([CMU]), ext, tmp_path, 64, 512, progress=False)
    assert "NaN" in report.failed["CMU-1-Small-Region"] and not report.done
    assert not (tmp_path / "CMU-1-Small-Region.pt").exists()


@hostile("weights-provenance-in-config", "a bag folder made with a local checkpoint",
         "bags_config.json provenance lists every weights file loaded with its sha256")
def test_weights_files_in_bags_config(sd, tmp_path):
    import json

    from slideflow.features import generate_bags, jobs_from_paths

    torch.save(sd[0], tmp_path / "w.pth")
    ext = _build(tmp_path / "w.pth", batch_size=8)
    generate_bags(jobs_from_paths([CMU]), ext, tmp_path / "bags", 64, 512, progress=False)
    cfg = json.loads((tmp_path / "bags" / "bags_config.json").read_text())
    sha = hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    assert cfg["provenance"]["weights_files"] == {str(tmp_path / "w.pth"): sha}
