"""bags_config.json names Slideflow 3's class where Slideflow 3 has the extractor, so its own
`rebuild_extractor` (import the class path, call it with `kwargs`) works on our bag folders;
our `{class, kwargs}` sits beside it under `extractor['slideflow']` for our rebuild."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.io.bags_config import diff_configs

SF3_CLASS = "slideflow.model.extractors.TorchImagenetLayerExtractor"
# what Slideflow 3's TorchImagenetLayerExtractor(model_name, tile_px, **transform) takes
SF3_KWARGS = {"model_name", "tile_px", "center_crop", "resize", "interpolation", "antialias",
              "norm_mean", "norm_std"}


@pytest.fixture()
def hub_resnet18(tmp_path, monkeypatch):
    """resnet18_imagenet 'pretrained' from a torch hub cache file (seeded weights, offline)."""
    src = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=4)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(src.model.state_dict(), ckpt / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ext = sf.build_feature_extractor("resnet18_imagenet")
    assert ext.pretrained
    return ext


def test_bag_folder_names_slideflow3_class(hub_resnet18, cmu_slides_project, tmp_path):
    ext = hub_resnet18
    ds = cmu_slides_project.dataset(64, 256)
    out = tmp_path / "bags"
    ds.generate_feature_bags(ext, out, progress=False)
    cfg = json.loads((out / "bags_config.json").read_text())
    entry = cfg["extractor"]
    assert entry["class"] == SF3_CLASS and set(entry["kwargs"]) == SF3_KWARGS
    assert entry["kwargs"]["model_name"] == "resnet18" and entry["kwargs"]["tile_px"] == 64
    assert entry["kwargs"]["resize"] is False and entry["kwargs"]["center_crop"] is False
    assert entry["slideflow"] == ext.dump_config()
    # Slideflow 3's rebuild: import the module, call the class with kwargs (simulated here)
    module, _, name = entry["class"].rpartition(".")
    assert (module, name) == ("slideflow.model.extractors", "TorchImagenetLayerExtractor")

    tiles = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    ours, _ = sf.model.rebuild_extractor(out)
    np.testing.assert_array_equal(ours(tiles), ext(tiles))
    # the Slideflow 3 half alone means the same extractor here too
    theirs, _ = sf.model.rebuild_extractor({**cfg, "extractor": {
        "class": entry["class"], "kwargs": entry["kwargs"]}}, verify_weights=False)
    np.testing.assert_allclose(theirs(tiles), ext(tiles), rtol=1e-5, atol=1e-5)

    # a rerun reuses the folder; a folder written with our entry only is the same settings
    again = ds.generate_feature_bags(ext, out, progress=False)
    assert again.tiles == 0 or not again.done
    assert diff_configs({**cfg, "extractor": entry["slideflow"]}, cfg) == []


def test_no_slideflow3_class_where_it_would_differ(hub_resnet18, tmp_path):
    from slideflow.model.extractors.sf3_config import bags_entry

    rnd = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, device="meta")
    assert bags_entry(rnd, 224) == rnd.dump_config()  # random weights: not Slideflow 3's
    ours_order = sf.build_feature_extractor("resnet18_imagenet", resize=256, center_crop=224,
                                            order="resize_crop")
    assert bags_entry(ours_order, 224)["class"] == "slideflow.model.FeatureExtractor"
    sf3_order = sf.build_feature_extractor("resnet18_imagenet", resize=256, center_crop=224)
    kw = bags_entry(sf3_order, 299)["kwargs"]
    assert (kw["center_crop"], kw["resize"], kw["antialias"]) == (224, 256, False)
    lite = sf.build_feature_extractor("efficientnet_lite0_imagenet", device="meta")
    assert bags_entry(lite, 224)["class"] == "slideflow.model.FeatureExtractor"


def test_user_transform_keeps_our_entry():
    """A Slideflow-style object with its own transform (register_torch) has no Slideflow 3
    class here: the entry is ours (this crashed on the missing crop/resize fields)."""
    from slideflow.model.extractors.sf3 import as_feature_extractor
    from slideflow.model.extractors.sf3_config import bags_entry

    class Obj:
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten())
        num_features = 4

        @staticmethod
        def transform(x):
            return x.float() / 255

    ext = as_feature_extractor(Obj(), name="mine")
    assert bags_entry(ext, 64) == ext.dump_config()
