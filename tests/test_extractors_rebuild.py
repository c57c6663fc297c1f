"""rebuild_extractor: round trips, Slideflow 3 configs, and configs that must be refused."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.errors import ExtractorNotFound, UnsafeConfigError, WeightsError
from slideflow.model.extractors.rebuild import extractor_arguments, rebuild_extractor

torch.set_num_threads(1)
TILES = np.random.default_rng(5).integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """An extractor with saved weights, options and a bag folder config, as features.py writes."""
    tmp = tmp_path_factory.mktemp("bags")
    src = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=9)
    torch.save(src.model.state_dict(), tmp / "encoder.pth")
    ext = sf.build_feature_extractor("resnet18_imagenet", weights=tmp / "encoder.pth",
                                     resize=64, center_crop=56, interpolation="bicubic",
                                     layers=["layer3", "layer4"], pooling="max")
    cfg = {"extractor": ext.dump_config(), "normalizer": None,
           "num_features": ext.num_features, "tile_px": 72, "tile_um": 128,
           "provenance": {"weights_sha256": ext.weights_sha256}}
    (tmp / "bags_config.json").write_text(json.dumps(cfg))
    return ext, tmp, cfg


def test_round_trip_is_bit_identical(made):
    ext, folder, cfg = made
    kwargs = cfg["extractor"]["kwargs"]
    assert cfg["extractor"]["class"] == "slideflow.model.FeatureExtractor"
    assert kwargs["name"] == "resnet18_imagenet" and kwargs["layers"] == ["layer3", "layer4"]
    assert kwargs["interpolation"] == "bicubic" and kwargs["center_crop"] == 56
    for source in (folder, folder / "bags_config.json", json.loads(json.dumps(cfg))):
        again, normalizer = rebuild_extractor(source)
        assert normalizer is None
        assert again.num_features == ext.num_features == 768
        assert str(again.transform) == str(ext.transform)
        np.testing.assert_array_equal(again(TILES), ext(TILES))
    only_extractor, _ = rebuild_extractor(cfg["extractor"])
    np.testing.assert_array_equal(only_extractor(TILES), ext(TILES))


def test_rebuild_checks_weights_and_dimension(made, tmp_path):
    ext, folder, cfg = made
    other = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=1)
    torch.save(other.model.state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="sha256"):
        rebuild_extractor(folder, weights=str(tmp_path / "other.pth"))
    swapped, _ = rebuild_extractor(folder, weights=str(tmp_path / "other.pth"),
                                   verify_weights=False)
    assert swapped.weights_sha256 != ext.weights_sha256
    wrong_dim = dict(cfg, num_features=5)
    with pytest.raises(WeightsError, match="5"):
        rebuild_extractor(wrong_dim)


def test_rebuild_with_normalizer(made):
    _, _, cfg = made
    norm_cfg = {"method": "reinhard", "fit": {"target_means": [65.2, 28.9, -14.1],
                                              "target_stds": [15.8, 9.3, 6.0]}}
    ext, normalizer = rebuild_extractor(dict(cfg, normalizer=norm_cfg))
    assert normalizer is not None and normalizer.to_config()["method"] == "reinhard"
    np.testing.assert_allclose(normalizer.to_config()["fit"]["target_means"], [65.2, 28.9, -14.1],
                               rtol=1e-6)


@pytest.mark.parametrize("cls", ["os.system", "builtins.eval", "subprocess.Popen",
                                 "slideflow.model.extractors.base.FeatureExtractor",
                                 "slideflow.model.extractors.rebuild.rebuild_extractor"])
def test_malicious_class_is_refused_without_importing_it(cls, monkeypatch, tmp_path):
    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: imported.append(name) or real(name, *a))
    marker = tmp_path / "pwned"
    cfg = {"extractor": {"class": cls, "kwargs": {"command": f"touch {marker}",
                                                  "source": "__import__('os')"}}}
    with pytest.raises(UnsafeConfigError, match="not a registered"):
        rebuild_extractor(cfg)
    assert not marker.exists()
    assert not [m for m in imported if m.split(".")[0] in ("os", "builtins", "subprocess")]


def test_malformed_configs_are_refused():
    for bad in ({"extractor": "os.system"}, {"extractor": {"class": ["os", "system"]}},
                {"extractor": {"class": "slideflow.model.FeatureExtractor", "kwargs": {}}},
                {"nothing": 1}):
        with pytest.raises(UnsafeConfigError):
            rebuild_extractor(bad)
    with pytest.raises(ExtractorNotFound, match="did you mean|Did you mean"):
        rebuild_extractor({"class": "slideflow.model.FeatureExtractor",
                           "kwargs": {"name": "resnet5_imagenet"}})


def test_slideflow3_class_paths_map_to_registry_names():
    args = extractor_arguments({"class": "slideflow.model.extractors.retccl.RetCCLFeatures",
                                "kwargs": {"center_crop": True, "ckpt": "/models/retccl.pth"}})
    assert args == {"name": "retccl", "weights": "/models/retccl.pth", "resize": False,
                    "center_crop": 256, "order": "crop_resize", "interpolation": "bilinear",
                    "antialias": False, "norm_mean": [0.485, 0.456, 0.406],
                    "norm_std": [0.229, 0.224, 0.225]}
    uni = extractor_arguments({"class": "slideflow.model.extractors.uni.UNIFeatures",
                               "kwargs": {"weights": "/m/uni.bin", "resize": 224}})
    assert uni["name"] == "uni" and uni["resize"] == 224 and uni["order"] == "resize_crop"
    imagenet = extractor_arguments({
        "class": "slideflow.model.extractors.TorchImagenetLayerExtractor",
        "kwargs": {"model_name": "resnet50", "tile_px": 299, "layers": ["layer3", "layer4"],
                   "pooling": "avg"}})
    assert imagenet["name"] == "resnet50_imagenet" and imagenet["resize"] is False
    assert imagenet["layers"] == ["layer3", "layer4"] and imagenet["pooling"] == "avg"
    postconv = extractor_arguments({
        "class": "slideflow.model.extractors.TorchImagenetLayerExtractor",
        "kwargs": {"model_name": "densenet", "tile_px": 256, "layers": "postconv"}})
    assert postconv["name"] == "densenet121_imagenet" and "layers" not in postconv
    dino = extractor_arguments({"class": "slideflow.model.extractors.dinov2.DinoV2Features",
                                "kwargs": {"center_crop": True}, "cfg": "/c.yaml",
                                "weights": "/t.pth"})
    assert dino == {"name": "dinov2", "resize": False, "center_crop": 224,
                    "config": "/c.yaml", "weights": "/t.pth"}
    with pytest.raises(ExtractorNotFound, match="TensorFlow"):
        extractor_arguments({"class": "slideflow.model.extractors.simclr.SimCLR_Features",
                             "kwargs": {"ckpt": "x"}})
    with pytest.raises(ExtractorNotFound, match="alexnet"):
        extractor_arguments({"class": "slideflow.model.extractors.TorchImagenetLayerExtractor",
                             "kwargs": {"model_name": "alexnet", "tile_px": 224}})


def test_slideflow3_imagenet_bag_rebuilds_with_its_preprocessing(tmp_path):
    src = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=2)
    torch.save(src.model.state_dict(), tmp_path / "resnet18.pth")
    cfg = {"extractor": {"class": "slideflow.model.extractors.TorchImagenetLayerExtractor",
                         "kwargs": {"model_name": "resnet18", "tile_px": 72,
                                    "layers": ["layer4"], "pooling": "avg"}},
           "normalizer": None, "num_features": 512}
    ext, _ = rebuild_extractor(cfg, weights=str(tmp_path / "resnet18.pth"))
    assert ext.transform.output_size(72, 72) == (72, 72)  # Slideflow 3 ran at tile size
    x = torch.from_numpy(TILES).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        ref = src.model((x - mean) / std).numpy()
    np.testing.assert_allclose(ext(TILES), ref, rtol=1e-4, atol=1e-5)


def test_random_init_round_trip_is_reproducible():
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=12, resize=64)
    again, _ = rebuild_extractor(json.loads(json.dumps(ext.dump_config())))
    assert not again.pretrained and again.dump_config() == ext.dump_config()
    np.testing.assert_array_equal(again(TILES), ext(TILES))


def test_slideflow3_gigapath_bags_recorded_as_virchow_rebuild_gigapath(caplog):
    """Slideflow 3's tile GigapathFeatures.dump_config wrote 'virchow.VirchowFeatures' with
    only its weights; the 1536 features of those bags identify GigaPath (Virchow: 2560)."""
    cfg = {"extractor": {"class": "slideflow.model.extractors.virchow.VirchowFeatures",
                         "kwargs": {"weights": None}},
           "normalizer": None, "num_features": 1536, "tile_px": 299, "tile_um": 302}
    with caplog.at_level("WARNING"):
        ext, _ = rebuild_extractor(cfg, pretrained=False, device="meta")
    assert ext.name == "gigapath" and ext.num_features == 1536
    assert "GigapathFeatures" in caplog.text
    # Slideflow 3's class: Resize(256, bicubic) + CenterCrop(224), ImageNet mean/std
    kw = ext.dump_config()["kwargs"]
    assert (kw["resize"], kw["center_crop"], kw["order"], kw["interpolation"]) == (
        256, 224, "resize_crop", "bicubic")
    assert ext.transform.output_size(299, 299) == (224, 224)
    tile_cfg = {"extractor": {"class": "slideflow.model.extractors.gigapath."
                              "GigapathTileFeatures", "kwargs": {"weights": None}},
                "num_features": 1536}
    tile, _ = rebuild_extractor(tile_cfg, pretrained=False, device="meta")
    assert tile.dump_config() == ext.dump_config()  # same as Slideflow 3's later class
    # a real Virchow config (2560 features) still rebuilds Virchow
    virchow = {"extractor": {"class": "slideflow.model.extractors.virchow.VirchowFeatures",
                             "kwargs": {"weights": None, "center_crop": False,
                                        "resize": False}},
               "num_features": 2560}
    ext, _ = rebuild_extractor(virchow, pretrained=False, device="meta")
    assert ext.name == "virchow" and ext.num_features == 2560
