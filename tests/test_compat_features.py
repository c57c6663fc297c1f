"""DatasetFeatures as Slideflow users call it: normaliser honoured, unknown keywords refused,
to_torch writes a bags_config.json that rebuild_extractor reads (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slideflow as sf

from conftest import CMU

torch.set_num_threads(1)
TILE_PX, TILE_UM = 64, 256  # CMU-1: 4 x 5 grid of 513 level-0 px tiles


@pytest.fixture(scope="module")
def ext():
    return sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=4,
                                      batch_size=8)


@pytest.fixture()
def dataset(cmu_slides_project):
    return cmu_slides_project.dataset(TILE_PX, TILE_UM)


def test_normalizer_is_honoured(dataset, ext, tmp_path):
    plain = sf.DatasetFeatures(ext, dataset, qc="otsu", progress=False)
    mac = sf.DatasetFeatures(ext, dataset, normalizer="macenko", qc="otsu", progress=False)
    f0, c0 = plain.bags["CMU-1-Small-Region"]
    f1, c1 = mac.bags["CMU-1-Small-Region"]
    np.testing.assert_array_equal(c0, c1)
    assert len(f0) == 7 and np.abs(f0 - f1).max() > 1e-3  # the normaliser changed the tiles
    # ... exactly as the bag writer's normaliser path does
    dataset.generate_feature_bags(ext, tmp_path / "bags", normalizer="macenko", qc="otsu",
                                  progress=False)
    bag = sf.io.read_bag(tmp_path / "bags" / "CMU-1-Small-Region.pt")
    np.testing.assert_allclose(bag.features, f1, rtol=1e-5, atol=1e-6)
    # Slideflow's normalizer_source: a preset, or an image to fit to
    v1 = sf.DatasetFeatures(ext, dataset, normalizer="macenko", normalizer_source="v1",
                            qc="otsu", progress=False)
    assert v1.normalizer.get_fit() == sf.norm.autoselect("macenko", preset="v1").get_fit()
    assert np.abs(v1.bags["CMU-1-Small-Region"][0] - f1).max() > 1e-4
    tile = tmp_path / "target.png"
    from PIL import Image

    Image.fromarray(sf.WSI(CMU, 256, 128).qc("otsu").read_tile(3)).save(tile)
    fitted = sf.DatasetFeatures(ext, dataset, normalizer="reinhard", normalizer_source=tile,
                                qc="otsu", progress=False)
    ref = sf.norm.autoselect("reinhard")
    ref.fit(np.asarray(Image.open(tile)))
    assert fitted.normalizer.get_fit() == ref.get_fit()


def test_unknown_keywords_are_refused(dataset, ext):
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['normaliser'\]"):
        sf.DatasetFeatures(ext, dataset, normaliser="macenko")
    with pytest.raises(TypeError, match="cache=.*from_bags"):
        sf.DatasetFeatures(ext, dataset, cache="x.pkl")
    with pytest.raises(TypeError, match="include_preds"):
        sf.DatasetFeatures(ext, dataset, include_preds=True)
    with pytest.raises(TypeError, match="layers= needs an extractor name"):
        sf.DatasetFeatures(ext, dataset, layers="layer3")


def test_to_torch_writes_a_rebuildable_bags_config(dataset, ext, tmp_path):
    df = sf.DatasetFeatures(ext, dataset, normalizer="reinhard", batch_size=4, qc="otsu",
                            progress=False)
    out = df.to_torch(tmp_path / "pt")
    cfg = json.loads((out / "bags_config.json").read_text())
    assert cfg["num_features"] == 512 and (cfg["tile_px"], cfg["tile_um"]) == (64, 256)
    assert cfg["extractor"]["kwargs"]["name"] == "resnet18_imagenet"
    assert cfg["normalizer"]["method"] == "reinhard"
    assert cfg["provenance"]["tile_selection"]["qc"] == "otsu"
    rebuilt, norm = sf.rebuild_extractor(out)
    assert norm.get_fit() == df.normalizer.get_fit()
    tiles = np.concatenate([t for t, _ in sf.WSI(CMU, TILE_PX, TILE_UM).qc("otsu").tiles()])
    feats = rebuilt(norm.transform(tiles))
    np.testing.assert_allclose(feats, df.bags["CMU-1-Small-Region"][0], rtol=1e-4, atol=1e-5)
    # a folder read back and written again keeps its config
    again = sf.DatasetFeatures.from_bags(out).to_torch(tmp_path / "copy")
    assert json.loads((again / "bags_config.json").read_text()) == cfg
