"""Slideflow 3's "Generating Features" guide (seed 002), its examples as our tests. Offline:
hub models (ctranspath, uni, gigapath...) are replaced by the embedded efficientnet_lite0 and by
resnet50_imagenet with random weights; their own spellings are covered by tests/test_compat_*.py
(see docs/porting.md for the list)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.model import rebuild_extractor

from conftest import CMU

EXT = "efficientnet_lite0_imagenet"  # stands in for 'ctranspath'


@pytest.fixture(scope="module")
def extractor():
    return sf.build_feature_extractor(EXT)


def test_list_extractors():
    table = sf.list_extractors()
    assert EXT in set(table["name"]) and "ctranspath" in set(table["name"])


def test_generate_bags_load_and_rebuild(extractor, cmu_slides_project, tmp_path):
    P = cmu_slides_project
    dataset = P.dataset(tile_px=112, tile_um=224)
    dataset.generate_feature_bags(extractor, outdir=tmp_path / "features")
    bag = torch.load(tmp_path / "features" / "CMU-1-Small-Region.pt")
    assert bag.dtype == torch.float32 and bag.shape[1] == 1280
    P.generate_feature_bags(extractor, dataset)  # default: <project>/pt_files/<extractor>
    assert (P.root / "pt_files" / EXT / "CMU-1-Small-Region.pt").exists()
    cfg = json.loads((tmp_path / "features" / "bags_config.json").read_text())
    assert (cfg["num_features"], cfg["tile_px"], cfg["tile_um"]) == (1280, 112, 224)
    rebuilt, normalizer = rebuild_extractor(tmp_path / "features" / "bags_config.json")
    assert normalizer is None
    tiles = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rebuilt(tiles), extractor(tiles))
    features = sf.DatasetFeatures(extractor, dataset)  # all at once, then exported
    features.to_torch(tmp_path / "bag_directory")
    # the same tissue QC default as generate_feature_bags, so the same bag
    torch.testing.assert_close(torch.load(tmp_path / "bag_directory" /
                                          "CMU-1-Small-Region.pt"),
                               torch.load(tmp_path / "features" / "CMU-1-Small-Region.pt"))


def test_from_a_tfrecord_and_a_wsi(extractor, cmu_slides_project):
    dataset = cmu_slides_project.dataset(tile_px=112, tile_um=224)
    dataset.extract_tiles(qc="otsu", report=False, progress=False)
    (tfr,) = dataset.tfrecords()
    bags, coords = extractor(tfr)
    assert bags.shape == (len(coords), 1280) and coords.shape[1] == 2
    wsi = sf.WSI(CMU, tile_px=112, tile_um=224)
    features = extractor(wsi)
    assert features.shape[-1] == 1280 and features.shape[:2] in (wsi.grid.shape,
                                                                wsi.grid.shape[::-1])


def test_imagenet_layers_preprocessing_precision_and_licence(extractor):
    resnet50 = sf.build_feature_extractor("resnet50_imagenet", tile_px=299, pretrained=False)
    assert resnet50.num_features == 2048
    layered = sf.build_feature_extractor("resnet50_imagenet", layers=["layer2.0.conv1",
                                                                      "layer3.1.conv2"],
                                         pooling="avg", tile_px=299, backend="torch",
                                         pretrained=False)
    assert layered.num_features == 128 + 256
    resized = sf.build_feature_extractor("resnet50_imagenet", resize=224,
                                         interpolation="bicubic", antialias=True,
                                         pretrained=False, device="meta")
    t = resized.transform
    assert (t.resize_px, t.interpolation, t.antialias, t.center_crop) == (224, "bicubic",
                                                                          True, None)
    custom = sf.build_feature_extractor("resnet50_imagenet", resize=256,
                                        interpolation="bicubic", center_crop=224,
                                        pretrained=False, device="meta")
    # Slideflow 3's printed transform: CenterCrop(224) -> Resize(256, bicubic, no antialias)
    assert custom.transform.order == "crop_resize" and not custom.transform.antialias
    plain = sf.build_feature_extractor(EXT, mixed_precision=False)
    assert plain.precision == "fp32"
    assert extractor.license and isinstance(extractor.citation, str)


def test_trained_model_folder_is_refused_naming_the_equivalent(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "params.json").write_text('{"hp": {"model": "xception"}, "tile_px": 299}')
    with pytest.raises(sf.errors.ExtractorNotFound, match="model.keras"):
        sf.build_feature_extractor(str(folder), layers="sepconv3_bn")
    # the equivalent the message names: the exported network, same layer name
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.SeparableConv2D(4, 3, name="sepconv3")(inp)
    x = keras.layers.BatchNormalization(name="sepconv3_bn")(x)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(tmp_path / "model.keras")
    ext = sf.build_feature_extractor(str(tmp_path / "model.keras"), layers="sepconv3_bn")
    assert ext.num_features == 4 and ext(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 4)


def test_keras_layer_names_build_the_tensorflow_extractor(tmp_path, monkeypatch):
    """`layers=` that only a Keras ResNet50 has: the TensorFlow extractor, no backend= needed."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    keras_layers = ["conv1_relu", "conv3_block1_2_relu"]
    # as written: Keras' ImageNet weights are looked up locally, never downloaded
    with pytest.raises(sf.errors.WeightsError,
                       match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        sf.build_feature_extractor("resnet50_imagenet", layers=keras_layers, pooling="avg",
                                   tile_px=299)
    resnet50 = sf.build_feature_extractor("resnet50_imagenet", layers=keras_layers,
                                          pooling="avg", tile_px=299, pretrained=False)
    assert type(resnet50).__name__ == "KerasFeatureExtractor"
    assert resnet50.num_features == 64 + 128
    assert resnet50.dump_config()["kwargs"]["layers"] == keras_layers
    # PyTorch module names stay PyTorch; a name neither has is PyTorch's error
    torch_layers = sf.build_feature_extractor("resnet50_imagenet", layers=["layer2.0.conv1"],
                                              tile_px=64, pretrained=False)
    assert type(torch_layers).__name__ == "FeatureExtractor"
    with pytest.raises(ValueError, match="unknown layers"):
        sf.build_feature_extractor("resnet50_imagenet", layers=["no_such_layer"],
                                   pretrained=False)


def test_hub_models_offline_name_the_weights_and_the_fix(tmp_path, monkeypatch):
    """The hub examples as written, offline: the error names the file and how to get it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(sf.errors.WeightsError, match=r"(?s)ctranspath\.pth.*huggingface"):
        sf.build_feature_extractor("ctranspath")
    for name, kw, missing in (
            ("uni", dict(weights="../pytorch_model.bin"), "../pytorch_model.bin"),
            ("gigapath.tile", dict(weights="pytorch_model.bin"), "pytorch_model.bin"),
            ("gigapath", dict(tile_encoder_weights="../pytorch_model.bin",
                              slide_encoder_weights="../slide_encoder.pth"),
             "../pytorch_model.bin")):
        with pytest.raises(sf.errors.WeightsError, match=f"not found: {missing}"):
            sf.build_feature_extractor(name, **kw)


def test_two_stage_tile_then_slide_like_gigapath(cmu_slides_project, tmp_path):
    """The GigaPath examples' flow (tile bags with `.tile`, `.slide.generate_and_save`,
    `model(wsi)`), with a mean-pooling slide encoder paired to efficientnet_lite0 standing in
    for Prov-GigaPath's gated tile and slide weights."""
    from slideflow.model.slide_encoders import (
        SlideEncoderSpec,
        register_slide_encoder,
        unregister_slide_encoder,
    )

    spec = SlideEncoderSpec(name="lite0_pair_seed", family="mean", dim=None,
                            license="Apache-2.0", tile_extractor=EXT, tile_features=1280,
                            slideflow_pair=True)
    register_slide_encoder(spec, replace=True)
    try:
        P = cmu_slides_project
        dataset = P.dataset(tile_px=112, tile_um=224)
        pair = sf.build_feature_extractor(EXT)  # 'gigapath': tile + slide stages
        assert pair.tile.name == EXT and pair.slide.name == "lite0_pair_seed"
        P.generate_feature_bags(pair.tile, dataset, outdir=tmp_path / "bags")
        pair.slide.generate_and_save(str(tmp_path / "bags"), outdir=tmp_path / "embeddings")
        vec = torch.load(tmp_path / "embeddings" / "CMU-1-Small-Region.pt", weights_only=True)
        bag = torch.load(tmp_path / "bags" / "CMU-1-Small-Region.pt")
        torch.testing.assert_close(vec, bag.mean(0))
        wsi = sf.WSI(CMU, tile_px=112, tile_um=224)
        embedding = pair(wsi)  # the whole slide at once: no Otsu QC unless asked
        assert embedding.shape == (1280,)
    finally:
        unregister_slide_encoder(spec.name)


def test_documented_bags_config_rebuilds(tmp_path):
    """The guide's example `bags_config.json` (Slideflow 3's CTransPath class, Macenko fit):
    its class maps onto our registry and the normaliser is rebuilt with the recorded fit.
    Offline, random weights stand in for CTransPath's (`pretrained=False` override)."""
    cfg = {"extractor": {"class": "slideflow.model.extractors.ctranspath.CTransPathFeatures",
                         "kwargs": {"center_crop": True}},
           "normalizer": {"method": "macenko", "fit": {
               "stain_matrix_target": [[0.5062568187713623, 0.22186939418315887],
                                       [0.7532230615615845, 0.8652154803276062],
                                       [0.4069173336029053, 0.42241501808166504]],
               "target_concentrations": [1.7656903266906738, 1.2797492742538452]}},
           "num_features": 2048, "tile_px": 299, "tile_um": 302}
    path = tmp_path / "bags_config.json"
    path.write_text(json.dumps(cfg))
    # the example records 2048 features; CTransPath gives 768, and the mismatch is named
    with pytest.raises(sf.errors.WeightsError, match="768 features but the bags have 2048"):
        rebuild_extractor(path, pretrained=False, device="cpu")
    path.write_text(json.dumps({**cfg, "num_features": 768}))
    extractor, normalizer = rebuild_extractor(path, pretrained=False, device="cpu")
    assert extractor.name == "ctranspath" and extractor.transform.center_crop == 224
    again = normalizer.to_config()
    assert again["method"] == "macenko"
    for key in ("stain_matrix_target", "target_concentrations"):
        np.testing.assert_allclose(np.asarray(again["fit"][key]),
                                   cfg["normalizer"]["fit"][key], rtol=1e-6)
