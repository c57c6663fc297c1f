"""TIAToolbox's DeepFeatureExtractor reference (seed 003), each documented call as our own test
through `slideflow.compat.tiatoolbox`. Offline: the model is the embedded efficientnet_lite0
instead of a TIAToolbox pretrained name."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from PIL import Image

import slideflow as sf
from slideflow.compat.tiatoolbox import DeepFeatureExtractor
from slideflow.errors import InvalidArgumentError

from conftest import CMU

MODEL = "efficientnet_lite0_imagenet"
RES = [{"units": "mpp", "resolution": 1.0}]


class _Reader:
    """Stands in for TIAToolbox's WSIReader (its path attribute)."""

    def __init__(self, path):
        self.input_path = path


@pytest.fixture(scope="module")
def engine():
    return DeepFeatureExtractor(MODEL, batch_size=16, num_workers=0, weights=None,
                                device="cpu", verbose=False)


def test_patch_mode_returns_probabilities(engine, tmp_path):
    patches = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    out = engine.run(patches, patch_mode=True, output_type="dict")
    assert set(out) == {"probabilities"} and out["probabilities"].shape == (3, 1280)
    np.testing.assert_allclose(out["probabilities"], engine.model(patches), rtol=1e-6)
    files = []
    for i, p in enumerate(patches):
        files.append(tmp_path / f"p{i}.png")
        Image.fromarray(p).save(files[-1])
    path = engine.run(files, patch_mode=True, save_dir=tmp_path, output_type="zarr")
    np.testing.assert_allclose(zarr.open_group(str(path))["probabilities"][:],
                               out["probabilities"], rtol=1e-6)


def test_wsi_mode_maps_each_input_to_its_zarr(engine, tmp_path):
    out = engine.run([CMU], patch_mode=False, save_dir=tmp_path / "wsi",
                     input_resolutions=RES, patch_input_shape=(112, 112), output_type="zarr")
    assert list(out) == [CMU] and out[CMU] == tmp_path / "wsi" / "CMU-1-Small-Region.zarr"
    g = zarr.open_group(str(out[CMU]))
    feats, boxes = g["probabilities"][:], g["coordinates"][:]
    extent = int(112 / 0.499)
    assert feats.shape[1] == 1280 and boxes.shape == (len(feats), 4)
    np.testing.assert_array_equal(boxes[:, 2:] - boxes[:, :2], extent)  # level-0 boxes
    wsi = sf.WSI(CMU, 112, 112.0)
    wsi.qc("otsu")  # auto_get_mask (TIAToolbox's default) is Otsu tissue QC here
    np.testing.assert_array_equal(boxes[:, :2], wsi.coords)
    mem = engine.run([CMU], patch_mode=False, save_dir=tmp_path / "wsi", input_resolutions=RES,
                     patch_input_shape=(112, 112), output_type="dict")
    np.testing.assert_array_equal(mem[CMU]["probabilities"], feats)
    # a WSIReader-like input (TIAToolbox's readers carry .input_path) maps to its own output
    reader = _Reader(CMU)
    again = engine.run([reader], patch_mode=False, save_dir=tmp_path / "wsi",
                       input_resolutions=RES, patch_input_shape=(112, 112), output_type="zarr")
    assert again == {reader: out[CMU]}


def test_masks_and_ioconfig(engine, tmp_path):
    mask = np.zeros((297, 222), np.uint8)
    mask[:150, :111] = 255  # tissue only in the top-left quarter
    Image.fromarray(mask).save(tmp_path / "mask.png")
    ioconfig = {"input_resolutions": RES, "patch_input_shape": (112, 112),
                "stride_shape": (56, 56)}
    out = engine.run([CMU], masks=[tmp_path / "mask.png"], patch_mode=False,
                     save_dir=tmp_path / "m", ioconfig=ioconfig, output_type="dict")
    boxes = out[CMU]["coordinates"]
    assert len(boxes) > 0 and (boxes[:, 0] < 1110).all() and (boxes[:, 1] < 1500).all()
    steps = np.unique(np.diff(np.unique(boxes[:, 0])))
    assert steps.min() == int(112 / 0.499) // 2  # stride_shape = half a patch


def test_documented_errors(engine, tmp_path):
    with pytest.raises(ValueError, match="'zarr' or 'dict'"):
        engine.run(np.zeros((1, 8, 8, 3), np.uint8), output_type="db")
    with pytest.raises(InvalidArgumentError, match="save_dir"):
        engine.run([CMU], patch_mode=False, input_resolutions=RES)
    with pytest.raises(InvalidArgumentError, match="units"):
        engine.run([CMU], patch_mode=False, save_dir=tmp_path,
                   input_resolutions=[{"units": "level", "resolution": 0}])
    with pytest.raises(InvalidArgumentError, match="class_dict"):
        engine.run([CMU], patch_mode=False, save_dir=tmp_path, class_dict={0: "a"})
    with pytest.raises(TypeError, match="unexpected keyword"):
        engine.run([CMU], patch_mode=False, save_dir=tmp_path, colour="red")
    with pytest.raises(TypeError, match="register_torch"):
        DeepFeatureExtractor(object())


def test_engine_hooks(engine, tmp_path):
    raw = {"probabilities": np.ones((2, 4), np.float32),
           "coordinates": np.array([[0, 0, 8, 8], [8, 0, 16, 8]])}
    assert engine.post_process_patches(raw) is raw  # features: no post-processing
    saved = engine.save_predictions(raw, "zarr", save_path=tmp_path / "p.zarr")
    g = zarr.open_group(str(saved))
    np.testing.assert_array_equal(g["probabilities"][:], raw["probabilities"])
    np.testing.assert_array_equal(g["coordinates"][:], raw["coordinates"])
    assert set(engine.save_predictions(raw, "dict")) == {"probabilities", "coordinates"}
    with pytest.raises(ValueError, match="'zarr' or 'dict'"):
        engine.save_predictions(raw, "db")
    with pytest.raises(NotImplementedError, match=r"run\(\[wsi\], patch_mode=False"):
        engine.infer_wsi(None, tmp_path / "x.zarr")
