"""Slideflow 3 spellings of extractor construction (issue 13, docs/porting.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow import errors
from slideflow.model.extractors import register_torch, unregister_torch
from slideflow.model.extractors._factory_torch import TorchFeatureExtractor

from conftest import CMU

torch.set_num_threads(1)
RNG = np.random.default_rng(13)
TILES = RNG.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def test_tile_suffix_names_the_tile_encoder():
    a = sf.build_feature_extractor("resnet18_imagenet.tile", pretrained=False, seed=1)
    b = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=1)
    assert a.name == "resnet18_imagenet"
    np.testing.assert_array_equal(a(TILES), b(TILES))
    with pytest.raises(errors.ExtractorNotFound, match=r"slide-level.*'resnet18_imagenet'"):
        sf.build_feature_extractor("resnet18_imagenet.slide", pretrained=False)
    with pytest.raises(errors.ExtractorNotFound, match="unknown feature extractor"):
        sf.build_feature_extractor("nosuchmodel.tile")


def test_backend_keyword():
    ext = sf.build_feature_extractor("resnet18_imagenet", backend="torch", pretrained=False)
    assert ext.num_features == 512
    # backend='tensorflow' builds Keras extractors (tests/test_tensorflow.py); names without a
    # Keras application are refused naming the PyTorch spelling
    with pytest.raises(errors.ExtractorNotFound, match="no TensorFlow/Keras build.*backend='torch'"):
        sf.build_feature_extractor("resnet18_imagenet", backend="tensorflow", pretrained=False)
    with pytest.raises(ValueError, match="backend"):
        sf.build_feature_extractor("resnet18_imagenet", backend="jax", pretrained=False)


def test_dinov2_cfg_spelling(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("student:\n  arch: vit_small\n  patch_size: 14\ncrops:\n"
                      "  global_crops_size: 56\n")
    src = sf.build_feature_extractor("dinov2", config=config, pretrained=False, seed=5)
    sd = {f"backbone.{k}": v for k, v in src.model.state_dict().items()}
    torch.save({"teacher": sd}, tmp_path / "teacher_checkpoint.pth")
    tiles = RNG.integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    # Slideflow 3: build_feature_extractor('dinov2', weights=..., cfg=...)
    ext = sf.build_feature_extractor("dinov2", weights=tmp_path / "teacher_checkpoint.pth",
                                     cfg=str(config))
    np.testing.assert_allclose(ext(tiles), src(tiles), rtol=1e-5, atol=1e-5)
    assert ext.dump_config()["kwargs"]["config"] == str(config)
    with pytest.raises(TypeError, match="cfg= or config="):
        sf.build_feature_extractor("dinov2", cfg=config, config=config, pretrained=False)
    with pytest.raises(TypeError, match="only dinov2"):
        sf.build_feature_extractor("resnet18_imagenet", cfg=config, pretrained=False)


def test_simclr_ckpt_spelling(tmp_path):
    src = sf.build_feature_extractor("simclr", arch="resnet18", pretrained=False, seed=8)
    torch.save(src.state_dict(), tmp_path / "encoder.pth")
    ext = sf.build_feature_extractor("simclr", arch="resnet18", ckpt=tmp_path / "encoder.pth")
    np.testing.assert_allclose(ext(TILES), src(TILES), rtol=1e-5, atol=1e-5)
    # a Slideflow 3 (TensorFlow SimCLRv2) checkpoint folder is refused, naming our spelling
    tf_dir = tmp_path / "simclr_tf"
    tf_dir.mkdir()
    (tf_dir / "args.json").write_text("{}")
    (tf_dir / "ckpt-100.index").write_bytes(b"")
    for ckpt in (tf_dir, tf_dir / "ckpt-100"):
        with pytest.raises(errors.WeightsError,
                           match=r"TensorFlow SimCLR.*build_feature_extractor\('simclr', "
                                 r"weights="):
            sf.build_feature_extractor("simclr", ckpt=ckpt)


def test_imagenet_cnns_run_at_the_tile_size_like_slideflow():
    ext = sf.build_feature_extractor("resnet50_imagenet", tile_px=299, pretrained=False,
                                     device="meta")
    pre = ext.transform
    assert pre.output_size(299, 299) == (299, 299)  # Slideflow: no resize for ImageNet CNNs
    assert (pre.resize, pre.antialias, pre.interpolation) == (False, False, "bilinear")
    resized = sf.build_feature_extractor("resnet50_imagenet", resize=True, pretrained=False,
                                         device="meta")
    assert resized.transform.output_size(299, 299) == (224, 224)
    # postconv is the pooled output, as in Slideflow
    post = sf.build_feature_extractor("resnet18_imagenet", layers="postconv", pretrained=False,
                                      seed=3)
    ref = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=3)
    np.testing.assert_array_equal(post(TILES), ref(TILES))
    with pytest.raises(errors.ExtractorNotFound, match="include_preds"):
        sf.build_feature_extractor("resnet18_imagenet", include_preds=True, pretrained=False)


# ---------------------------------------------------------------------------- register_torch
class _TinyNet(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, dim, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class MyFeatureExtractor(TorchFeatureExtractor):
    """The class body of Slideflow 3's "Custom Feature Extractors" guide."""

    tag = "my_feature_extractor"
    license = "MIT"
    citation = "@misc{mine, title={Mine}}"

    def __init__(self, dim: int = 8, center_crop: bool = False):
        super().__init__(center_crop=center_crop)
        self.model = _TinyNet(dim)
        self.model.to(self.device)
        self.model.eval()
        self.num_features = dim
        self.transform = self.build_transform(img_size=48)

    def dump_config(self):
        return {"class": "MyFeatureExtractor", "kwargs": {}}


@pytest.fixture
def registered():
    @register_torch
    def my_feature_extractor(**kwargs):
        return MyFeatureExtractor(**kwargs)

    @register_torch("plain_module")
    def plain(**kwargs):
        class Obj:
            model = _TinyNet(4)
            num_features = 4
            transform = staticmethod(lambda x: x.float() / 255.0)

        return Obj()

    yield
    unregister_torch("my_feature_extractor")
    unregister_torch("plain_module")


def _by_hand(tiles: np.ndarray, dim: int, crop: int | None = None) -> np.ndarray:
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
    if crop:
        o = (x.shape[-1] - crop) // 2
        x = x[..., o:o + crop, o:o + crop]
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        return _TinyNet(dim)((x / 255 - mean) / std).numpy()


def test_register_torch_builds_by_name(registered, tmp_path):
    ext = sf.build_feature_extractor("my_feature_extractor", dim=6)
    assert ext.num_features == 6 and ext.license == "MIT"
    assert ext.citation.startswith("@misc")
    np.testing.assert_allclose(ext(TILES), _by_hand(TILES, 6), rtol=1e-4, atol=1e-5)
    cropped = sf.build_feature_extractor("my_feature_extractor", center_crop=True)
    np.testing.assert_allclose(cropped(TILES), _by_hand(TILES, 8, crop=48), rtol=1e-4,
                               atol=1e-5)
    assert "my_feature_extractor" in set(sf.list_extractors()["name"])
    # the object itself is callable on tiles and on a WSI, as in Slideflow
    obj = MyFeatureExtractor(dim=5)
    np.testing.assert_allclose(obj(TILES), _by_hand(TILES, 5), rtol=1e-4, atol=1e-5)
    wsi = sf.WSI(CMU, 64, 128).qc("otsu")
    grid = obj(wsi)
    assert grid.shape == wsi.grid.shape + (5,)
    # a plain object with model/transform/num_features works too
    plain = sf.build_feature_extractor("plain_module")
    x = torch.from_numpy(TILES).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        np.testing.assert_allclose(plain(TILES), _TinyNet(4)(x).numpy(), rtol=1e-4, atol=1e-5)
    # rebuild from the recorded config while the factory is registered
    kw = ext.dump_config()["kwargs"]
    assert kw == {"name": "my_feature_extractor", "dim": 6}
    again, _ = sf.rebuild_extractor({"extractor": ext.dump_config(), "num_features": 6})
    np.testing.assert_allclose(again(TILES), ext(TILES), rtol=1e-6)
    with pytest.raises(ValueError, match="Unrecognized"):
        MyFeatureExtractor.__bases__[0](colour=True)


# ---------------------------------------------------------------------------- citations
def _bibtex_entries(text: str) -> list[str]:
    """Split BibTeX text into entries, checking braces balance (a parse, not a prefix test)."""
    import re

    entries, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "@" and depth == 0:
            start = i
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            assert depth >= 0, text
            if depth == 0 and start is not None:
                entries.append(text[start:i + 1])
                start = None
    assert depth == 0 and entries, text
    for e in entries:
        assert re.match(r"@(article|inproceedings|misc|software|book)\{[\w:-]+,", e), e
        assert re.search(r"\btitle=\{", e) and re.search(r"\byear=\{\d{4}\}", e), e
    return entries


@pytest.mark.parametrize("name", sorted(sf.list_extractors(installed_only=True)["name"]))
def test_every_citation_is_bibtex(name):
    from slideflow.model.extractors.registry import get_spec

    _bibtex_entries(get_spec(name).citation)


def test_extractor_citation_attribute_is_bibtex():
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, device="meta")
    assert _bibtex_entries(ext.citation)[0].startswith("@inproceedings{he2016resnet,")
    timm = sf.build_feature_extractor("timm:resnet18", pretrained=False, device="meta")
    assert _bibtex_entries(timm.citation)[0].startswith("@misc{rw2019timm,")
