"""Outputs other tools read as their own: AtlasPatch H5, TIAToolbox zarr; `sf.io.convert`
between pt, CLAM/TRIDENT H5, AtlasPatch H5 and zarr, both ways (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch
from PIL import Image

import slideflow as sf
from slideflow.errors import BagError
from slideflow.features import SlideJob, generate_bags

from conftest import CMU

torch.set_num_threads(1)
TILE_PX, TILE_UM = 128, 128 * 0.499  # 128 level-0 px: read at level 0 without resizing


@pytest.fixture(scope="module")
def exts():
    a = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=1, batch_size=16)
    b = sf.build_feature_extractor("resnet34_imagenet", pretrained=False, seed=2, batch_size=16)
    return a, b


def _jobs():
    return [SlideJob(name=CMU.stem, slide_path=CMU)]


def _run(ext, out, fmt, **kw):
    from slideflow.selection import TileSelection

    return generate_bags(_jobs(), ext, out, TILE_PX, TILE_UM, fmt=fmt, progress=False,
                         selection=TileSelection(qc="otsu"), **kw)


def test_atlaspatch_layout_read_as_atlaspatch_documents(exts, tmp_path):
    a, b = exts
    out = tmp_path / "atlas"
    rep = _run(a, out, "atlaspatch")
    assert not rep.failed, rep.failed
    _run(b, out, "atlaspatch")  # a second extractor joins the same file, row-aligned
    h5_path = out / "patches" / f"{CMU.stem}.h5"
    assert h5_path.is_file() and not list(out.glob("*.h5"))
    wsi = sf.WSI(CMU, TILE_PX, TILE_UM).qc("otsu")
    # AtlasPatch README, "Using Extracted Data": its reader, step for step
    with h5py.File(h5_path, "r") as f:
        coords = f["coords"][...]
        patch_size = int(f.attrs["patch_size"])
        assert coords.dtype == np.int32 and coords.shape == (len(wsi), 5)
        assert int(f.attrs["patch_size_level0"]) == 128 and patch_size == TILE_PX
        assert f.attrs["wsi_path"] == str(CMU)
        feat_names = list(f["features"].keys())
        feats_a = f["features/resnet18_imagenet"][...]
        feats_b = f["features/resnet34_imagenet"][...]
    assert sorted(feat_names) == ["resnet18_imagenet", "resnet34_imagenet"]
    assert feats_a.dtype == np.float32 and feats_a.shape == (len(wsi), 512)
    assert feats_b.shape == (len(wsi), 512)
    np.testing.assert_array_equal(coords[:, :2], wsi.coords)
    tiles = np.concatenate([t for t, _ in wsi.tiles()])
    with openslide.OpenSlide(str(CMU)) as slide:
        for i in (0, len(coords) // 2, len(coords) - 1):
            x, y, read_w, read_h, level = coords[i]
            img = slide.read_region((int(x), int(y)), int(level),
                                    (int(read_w), int(read_h))).convert("RGB")
            if img.size != (patch_size, patch_size):
                img = img.resize((patch_size, patch_size), resample=Image.BILINEAR)
            np.testing.assert_array_equal(np.array(img), tiles[i])
    # row alignment: each dataset equals a run of that extractor alone
    alone = _run(a, tmp_path / "pt", "pt")
    assert not alone.failed
    np.testing.assert_allclose(feats_a, sf.io.read_bag(tmp_path / "pt" / f"{CMU.stem}.pt")
                               .features, rtol=1e-6)
    np.testing.assert_allclose(feats_b, b(tiles), rtol=1e-4, atol=1e-5)
    # our reader, per encoder; rebuild per encoder config
    bag = sf.io.read_bag(h5_path, encoder="resnet34_imagenet")
    np.testing.assert_array_equal(bag.features, feats_b)
    with pytest.raises(BagError, match="several encoders"):
        sf.io.read_bag(h5_path)
    cfgs = sorted(p.name for p in out.glob("bags_config*.json"))
    assert cfgs == ["bags_config.resnet18_imagenet.json", "bags_config.resnet34_imagenet.json"]
    rebuilt, _ = sf.rebuild_extractor(out / "bags_config.resnet34_imagenet.json")
    assert rebuilt.name == "resnet34_imagenet"
    with pytest.raises(Exception, match="bags_config.resnet18_imagenet.json"):
        sf.rebuild_extractor(out)
    # a rerun with the same settings reuses the file; other tiles are refused, not merged
    again = _run(a, out, "atlaspatch")
    assert again.skipped == [CMU.stem]
    from slideflow.selection import TileSelection

    other = generate_bags(_jobs(), sf.build_feature_extractor(
        "densenet121_imagenet", pretrained=False, device="cpu"), out, TILE_PX, TILE_UM,
        fmt="atlaspatch", progress=False, selection=TileSelection(qc=None))
    assert "other tiles" in other.failed[CMU.stem]
    with h5py.File(h5_path, "r") as f:
        assert sorted(f["features"]) == ["resnet18_imagenet", "resnet34_imagenet"]


def test_tiatoolbox_zarr_keys(exts, tmp_path):
    import zarr

    a, _ = exts
    _run(a, tmp_path / "z", "zarr")
    store = tmp_path / "z" / f"{CMU.stem}.zarr"
    group = zarr.open_group(str(store), mode="r")
    probs = np.asarray(group["probabilities"][...])
    boxes = np.asarray(group["coordinates"][...])
    assert probs.dtype == np.float32 and boxes.shape == (len(probs), 4)
    np.testing.assert_array_equal(boxes[:, 2:] - boxes[:, :2], 128)
    bag = sf.io.read_bag(store)
    np.testing.assert_array_equal(bag.features, probs)
    np.testing.assert_array_equal(bag.coords, boxes[:, :2])


def _foreign_zarr(path: Path, boxes: np.ndarray, feats: np.ndarray, key: str = "features"):
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array(key, data=feats)
    g.create_array("coordinates", data=boxes)


def test_foreign_zarr_coordinates_are_scaled_or_refused(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    boxes = np.array([[0, 0, 224, 224], [224, 0, 448, 224], [0, 224, 224, 448]], np.int64)
    path = tmp_path / "slide.zarr"
    _foreign_zarr(path, boxes, feats, key="probabilities")
    with pytest.raises(BagError, match="coords_scale="):
        sf.io.read_bag(path)
    bag = sf.io.read_bag(path, coords_scale=2.0)  # boxes at 2x the level-0 pixel size
    np.testing.assert_array_equal(bag.coords, boxes[:, :2] * 2)
    assert bag.patch_size_level0 == 448
    np.testing.assert_array_equal(bag.features, feats)
    out = sf.io.convert(path, tmp_path / "slide.h5", coords_scale=2.0)
    back = sf.io.read_bag(out[0])
    np.testing.assert_array_equal(back.coords, boxes[:, :2] * 2)
    assert back.patch_size_level0 == 448


def test_clam_h5_patch_level_gives_level0_size(tmp_path):
    path = tmp_path / "clam.h5"
    feats = np.ones((2, 8), np.float32)
    with h5py.File(path, "w") as f:
        f["features"] = feats
        c = f.create_dataset("coords", data=np.array([[0, 0], [1024, 0]], np.int64))
        c.attrs["patch_level"] = 1
        c.attrs["patch_size"] = 256
        c.attrs["downsample"] = np.array([4.0, 4.0])
    bag = sf.io.read_bag(path)
    assert bag.patch_size_level0 == 1024
    out = sf.io.convert(path, tmp_path / "conv.pt")
    np.testing.assert_array_equal(np.load(tmp_path / "conv.index.npz")["arr_0"],
                                  [[512, 512], [1536, 512]])  # centres
    assert out


def test_convert_round_trips_every_format(exts, tmp_path):
    a, _ = exts
    _run(a, tmp_path / "pt", "pt")
    src = sf.io.read_bag(tmp_path / "pt" / f"{CMU.stem}.pt")
    chain = [("h5", tmp_path / "h5"), ("atlaspatch", tmp_path / "ap"), ("zarr", tmp_path / "z"),
             ("atlaspatch", tmp_path / "ap2"), ("h5", tmp_path / "h52"), ("pt", tmp_path / "pt2")]
    prev = tmp_path / "pt"
    for fmt, dst in chain:
        written = sf.io.convert(prev, dst, format=fmt)
        assert len(written) == 1
        bag = sf.io.read_bag(written[0])
        np.testing.assert_array_equal(bag.features, src.features)
        np.testing.assert_array_equal(bag.coords, src.coords)
        assert bag.patch_size_level0 == 128
        assert (dst / "bags_config.json").exists() or list(dst.glob("bags_config*.json"))
        prev = dst
    assert (tmp_path / "ap" / "patches" / f"{CMU.stem}.h5").is_file()
    with h5py.File(tmp_path / "ap" / "patches" / f"{CMU.stem}.h5", "r") as f:
        assert list(f["features"]) == ["resnet18_imagenet"]
    assert json.loads((tmp_path / "pt2" / "bags_config.json").read_text())["num_features"] == 512
    # single files too
    one = sf.io.convert(tmp_path / "ap" / "patches" / f"{CMU.stem}.h5", tmp_path / "x.zarr")
    np.testing.assert_array_equal(sf.io.read_bag(one[0]).features, src.features)


def test_cli_format_atlaspatch(tmp_path):
    from typer.testing import CliRunner

    from slideflow.cli import app

    out = tmp_path / "atlas"
    res = CliRunner().invoke(app, ["features", str(CMU), "-o", str(out), "--tile-px", "64",
                                   "--tile-um", "512", "--format", "atlaspatch", "--qc", "none",
                                   "-e", "efficientnet_lite0_imagenet"])
    assert res.exit_code == 0, res.output
    with h5py.File(out / "patches" / f"{CMU.stem}.h5", "r") as f:
        assert f["coords"].shape == (4, 5) and f["coords"].dtype == np.int32
        assert f["features/efficientnet_lite0_imagenet"].shape == (4, 1280)
    assert (out / "bags_config.efficientnet_lite0_imagenet.json").is_file()


def test_cli_several_extractors_into_one_atlaspatch_file_through_the_lock(tmp_path):
    """`-e a,b --format atlaspatch`: one pass, one slide lock for the shared folder, one H5
    with both feature sets row-aligned; a held lock skips the slide without writing."""
    from typer.testing import CliRunner

    from slideflow.cli import app
    from slideflow.io.locks import SlideLock

    ckpt = tmp_path / "resnet18.pth"
    torch.save(sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=4)
               .model.state_dict(), ckpt)
    names = ("resnet18_imagenet", "efficientnet_lite0_imagenet")
    common = [str(CMU), "--tile-px", "64", "--tile-um", "512", "--format", "atlaspatch",
              "--qc", "none", "-q"]
    both = tmp_path / "both"
    args = ["features", *common, "-o", str(both), "-e", ",".join(names),
            "--weights", f"resnet18_imagenet={ckpt}"]
    runner = CliRunner()
    h5_path = both / "patches" / f"{CMU.stem}.h5"
    with SlideLock(both, CMU.stem) as lock:           # another process holds the slide
        assert lock.acquired
        res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((both / "summary.json").read_text())["busy"] == 1
    assert not h5_path.exists()

    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((both / "summary.json").read_text())["done"] == 1
    with h5py.File(h5_path, "r") as f:
        coords = f["coords"][...]
        got = {n: f[f"features/{n}"][...] for n in f["features"]}
    assert sorted(got) == sorted(names) and coords.shape == (4, 5)
    assert got["resnet18_imagenet"].shape == (4, 512)
    assert got["efficientnet_lite0_imagenet"].shape == (4, 1280)
    assert sorted(p.name for p in both.glob("bags_config*.json")) == [
        f"bags_config.{n}.json" for n in sorted(names)]
    assert not list(both.rglob("*.lock")) and not list(both.rglob("*.tmp*"))
    for name in names:                                 # row-aligned: equal to a run alone
        alone = tmp_path / name
        extra = ["--weights", str(ckpt)] if name == "resnet18_imagenet" else []
        res = runner.invoke(app, ["features", *common, "-o", str(alone), "-e", name, *extra])
        assert res.exit_code == 0, res.output
        with h5py.File(alone / "patches" / f"{CMU.stem}.h5", "r") as f:
            np.testing.assert_array_equal(f["coords"][...], coords)
            np.testing.assert_allclose(got[name], f[f"features/{name}"][...], rtol=1e-5,
                                       atol=1e-6)
    res = runner.invoke(app, args)                     # nothing left to do
    assert res.exit_code == 0, res.output
    assert json.loads((both / "summary.json").read_text())["reused"] == 1
