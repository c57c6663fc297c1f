"""AtlasPatch's README (seed 004): `atlaspatch process` as `slideflow atlaspatch process`, and
its reading examples run on the file we write. Offline: `resnet18` (an AtlasPatch name) loads a
seeded checkpoint from a temporary torch hub cache; the embedded efficientnet_lite0 runs beside
it. Install steps and SLURM scripts are not code to run (docs/porting.md)."""

from __future__ import annotations

import h5py
import numpy as np
import openslide
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import slideflow as sf
from slideflow.cli import app

from conftest import CMU

runner = CliRunner()


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    src = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=2)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(src.model.state_dict(), ckpt / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def _process(tmp_path, *extra):
    return runner.invoke(app, ["atlaspatch", "process", str(CMU), "--output",
                               str(tmp_path / "output"), "--patch-size", "112",
                               "--target-mag", "10", "--feature-extractors",
                               "resnet18,efficientnet_lite0_imagenet",
                               "--feature-precision", "float32", *extra])


def test_minimal_run_and_reading_examples(hub, tmp_path):
    res = _process(tmp_path, "--device", "cpu")
    assert res.exit_code == 0, res.output
    h5_path = tmp_path / "output" / "patches" / "CMU-1-Small-Region.h5"
    # "Patch Coordinates" example
    with h5py.File(h5_path, "r") as f:
        coords = f["coords"][...]
        assert coords.dtype == np.int32 and coords.shape[1] == 5
        patch_size_lvl0 = int(f.attrs["patch_size_level0"])
        assert patch_size_lvl0 == int(112 / 0.499)
        boxes = np.column_stack([coords[:, 0], coords[:, 1], coords[:, 0] + patch_size_lvl0,
                                 coords[:, 1] + patch_size_lvl0])
        assert (boxes[:, 2] <= 2220).all()
        slide_path = f.attrs["wsi_path"]
        patch_size = int(f.attrs["patch_size"])
        # "Feature Matrices" example: AtlasPatch's names in the file
        assert sorted(f["features"].keys()) == ["efficientnet_lite0_imagenet", "resnet18"]
        resnet18_feats = f["features/resnet18"][...]
        assert resnet18_feats.shape == (len(coords), 512)
    slide = openslide.OpenSlide(slide_path)
    try:
        x, y, read_w, read_h, level = coords[0]
        region = slide.read_region((int(x), int(y)), int(level), (int(read_w), int(read_h)))
        patch = region.convert("RGB").resize((patch_size, patch_size),
                                             resample=Image.Resampling.BILINEAR)
        assert np.array(patch).shape == (112, 112, 3)
    finally:
        slide.close()
    # tiles are ours: the same features as slideflow's resnet18_imagenet on the same slide
    ours = sf.build_feature_extractor("resnet18_imagenet")
    wsi = sf.WSI(CMU, 112, "10x")
    wsi.qc("otsu")
    np.testing.assert_array_equal(coords[:, :2], wsi.coords)
    tiles = np.concatenate([t for t, _ in wsi.tiles()])
    np.testing.assert_allclose(resnet18_feats, ours(tiles), rtol=1e-4, atol=1e-4)
    again = _process(tmp_path)  # --skip-existing (default) reuses the file
    assert again.exit_code == 0 and "1 reused" in again.output


def test_step_size_mpp_csv_and_refusals(tmp_path):
    csv_path = tmp_path / "mpp.csv"
    csv_path.write_text("wsi,mpp\nCMU-1-Small-Region.svs,0.998\n")
    res = runner.invoke(app, ["atlaspatch", "process", str(CMU), "-o", str(tmp_path / "o"),
                              "--patch-size", "112", "--target-mag", "10",
                              "--feature-extractors", "efficientnet_lite0_imagenet",
                              "--step-size", "56", "--mpp-csv", str(csv_path),
                              "--feature-precision", "float32", "--force"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "o" / "patches" / "CMU-1-Small-Region.h5") as f:
        assert int(f.attrs["patch_size_level0"]) == int(112 / 0.998)
        xs = np.unique(f["coords"][:, 0])
        assert np.diff(xs).min() == int(112 / 0.998) // 2
    for extra, flag in ((["--feature-plugin", str(tmp_path / "none.py")], "plugin file"),
                        (["--no-fast-mode"], "--no-fast-mode"),
                        (["--visualize-grids"], "--visualize"),
                        (["--step-size", "50"], "step"),
                        (["--feature-precision", "int8"], "--feature-precision")):
        bad = runner.invoke(app, ["atlaspatch", "process", str(CMU), "-o", str(tmp_path / "x"),
                                  "--patch-size", "112", "--target-mag", "10",
                                  "--feature-extractors", "efficientnet_lite0_imagenet",
                                  *extra])
        assert bad.exit_code != 0 and flag in bad.output, (extra, bad.output)
        assert not (tmp_path / "x" / "patches").exists()


PLUGIN = """
import torch
from torchvision import transforms
from atlas_patch.models.patch.custom import CustomEncoderComponents, register_custom_encoder


def build_my_encoder(device: torch.device, dtype: torch.dtype) -> CustomEncoderComponents:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    model = model.to(device=device, dtype=dtype).eval()
    preprocess = transforms.Compose([transforms.Resize(224), transforms.ToTensor()])

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model(batch)

    return CustomEncoderComponents(model=model, preprocess=preprocess, forward_fn=forward)


def register_feature_extractors(registry, device, dtype, num_workers):
    register_custom_encoder(registry=registry, name="my_encoder", embedding_dim=8,
                            loader=build_my_encoder, device=device, dtype=dtype,
                            num_workers=num_workers)
"""


def test_bring_your_own_encoder_plugin(tmp_path):
    from torchvision import transforms

    from slideflow.model.extractors.sf3 import unregister_torch

    (tmp_path / "plugin.py").write_text(PLUGIN)
    try:
        res = runner.invoke(app, ["atlaspatch", "process", str(CMU), "-o", str(tmp_path / "o"),
                                  "--patch-size", "112", "--target-mag", "10",
                                  "--feature-plugin", str(tmp_path / "plugin.py"),
                                  "--feature-extractors", "my_encoder",
                                  "--feature-precision", "float32"])
        assert res.exit_code == 0, res.output
        with h5py.File(tmp_path / "o" / "patches" / "CMU-1-Small-Region.h5") as f:
            feats = f["features/my_encoder"][...]
            coords = f["coords"][...]
        assert feats.shape == (len(coords), 8)
        # the plugin's own transform and forward, on the first tile as AtlasPatch reads it
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten()).eval()
        wsi = sf.WSI(CMU, 112, "10x")
        wsi.qc("otsu")
        first = next(iter(wsi.tiles(batch_size=1)))[0][0]
        pre = transforms.Compose([transforms.Resize(224), transforms.ToTensor()])
        with torch.no_grad():
            want = model(pre(Image.fromarray(first)).unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(feats[0], want, rtol=1e-4, atol=1e-5)
    finally:
        unregister_torch("my_encoder")


def test_minimal_run_as_written_resolves_every_name(tmp_path, monkeypatch):
    """`--feature-extractors uni_v1,dinov2_small,openmidnight`: uni_v1 is slideflow's uni,
    dinov2_small our dinov2_vits14, openmidnight our openmidnight. Offline, with no weights in
    the cache, the run stops at the first weights it needs and names where they live; no
    features file is written."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    res = runner.invoke(app, ["atlaspatch", "process", str(CMU), "--output",
                              str(tmp_path / "output"), "--patch-size", "256", "--target-mag",
                              "20", "--feature-extractors", "uni_v1,dinov2_small,openmidnight"])
    assert res.exit_code != 0
    said = res.output + str(res.exception)
    assert "not available" not in said and "MahmoodLab/uni" in said
    assert not list((tmp_path / "output").rglob("*.h5"))
