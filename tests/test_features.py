"""Feature bags end to end on real slides with the embedded extractor (issue 5 / 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.errors import BagsConfigMismatchError, UnsafeConfigError

from conftest import CMU, TCGA_J2K

TILE_PX, TILE_UM = 112, 224  # CMU-1: 24 grid tiles of 448 level-0 px, resized to 224 by the model


@pytest.fixture(scope="module")
def ext():
    return sf.build_feature_extractor("efficientnet_lite0_imagenet", batch_size=8)


@pytest.fixture()
def project(cmu_slides_project):
    return cmu_slides_project


def test_bags_from_slides_match_the_wsi_grid(project, ext, tmp_path):
    ds = project.dataset(TILE_PX, TILE_UM)
    out = tmp_path / "bags"
    report = ds.generate_feature_bags(ext, out, qc="otsu", progress=False)
    assert list(report.done) == ["CMU-1-Small-Region"] and not report.failed
    wsi = sf.WSI(CMU, TILE_PX, TILE_UM).qc("otsu")
    bag = sf.io.read_bag(out / "CMU-1-Small-Region.pt")
    assert bag.features.shape == (len(wsi), 1280) and bag.features.dtype == np.float32
    np.testing.assert_array_equal(bag.coords, wsi.coords)
    index = np.load(out / "CMU-1-Small-Region.index.npz")["arr_0"]
    np.testing.assert_array_equal(index, wsi.coords + wsi.full_extract_px // 2)  # centres
    pt = torch.load(out / "CMU-1-Small-Region.pt", weights_only=True)
    np.testing.assert_array_equal(pt.numpy(), bag.features)
    grid = ext(wsi)  # the single-slide path gives the same rows
    np.testing.assert_array_equal(grid.rows, bag.features)
    cfg = json.loads((out / "bags_config.json").read_text())
    assert cfg["num_features"] == 1280 and cfg["tile_px"] == TILE_PX and cfg["tile_um"] == TILE_UM
    assert cfg["extractor"]["kwargs"]["name"] == "efficientnet_lite0_imagenet"
    assert cfg["provenance"]["weights_sha256"] == ext.weights_sha256
    assert cfg["provenance"]["tile_selection"]["qc"] == "otsu"


def test_bag_runner_decodes_on_the_extractors_device(project, ext, tmp_path, monkeypatch):
    """The bag runner (used by the CLI) hands the extractor to the tile source: on CUDA, TFRecord
    tiles go to nvJPEG and slides to the reader's torch decoder on that device. Here the policy
    says "decode on the extractor's device" for a CPU extractor, so the same wiring runs the
    torchvision decoders on the CPU; only the device placement is untested."""
    from slideflow import pipeline, tfrecord_decode
    from slideflow.engine import slide_job
    from slideflow.model.extractors import runner
    from slideflow.slide import decode

    ds = project.dataset(TILE_PX, TILE_UM)
    ds.extract_tiles(qc="otsu", report=False, progress=False)
    base_tfr = ds.generate_feature_bags(ext, tmp_path / "c0", source="tfrecords", progress=False)
    base_sld = ds.generate_feature_bags(ext, tmp_path / "s0", source="slides", qc="otsu",
                                        progress=False)
    policy = lambda e: "cpu" if e is ext else None  # noqa: E731
    monkeypatch.setattr(pipeline, "gpu_decode_device", policy)
    monkeypatch.setattr(slide_job, "gpu_decode_device", policy)
    seen, nvjpeg, torch_decodes = [], [], []
    real_to_device, real_decode = runner.BatchRunner._to_device, tfrecord_decode._decode
    real_many = decode.TorchDecoder.decode_many
    monkeypatch.setattr(runner.BatchRunner, "_to_device",
                        lambda self, t: seen.append(type(t).__name__) or real_to_device(self, t))
    monkeypatch.setattr(tfrecord_decode, "_decode",
                        lambda raws, dev, cpu=False: nvjpeg.append(dev) or
                        real_decode(raws, dev, cpu))
    monkeypatch.setattr(decode.TorchDecoder, "decode_many",
                        lambda self, s: torch_decodes.append(len(s)) or real_many(self, s))
    tfr = ds.generate_feature_bags(ext, tmp_path / "c1", source="tfrecords", progress=False)
    assert tfr.tiles == base_tfr.tiles > 0 and nvjpeg and set(nvjpeg) == {"cpu"}
    assert set(seen) == {"Tensor"}  # tiles reached the model as tensors (Rebatcher kept them)
    seen.clear()
    sld = ds.generate_feature_bags(ext, tmp_path / "s1", source="slides", qc="otsu",
                                   progress=False)
    assert sld.tiles == base_sld.tiles and sum(torch_decodes) > 0 and set(seen) == {"Tensor"}
    for a, b in (("c0", "c1"), ("s0", "s1")):
        x = sf.io.read_bag(tmp_path / a / "CMU-1-Small-Region.pt")
        y = sf.io.read_bag(tmp_path / b / "CMU-1-Small-Region.pt")
        np.testing.assert_array_equal(x.coords, y.coords)
        # the two JPEG decoders differ by at most one level per pixel; at 448 -> 112 px (an
        # exact 4x box) that moves a few activations by up to ~0.09
        np.testing.assert_allclose(x.features, y.features, atol=0.15, err_msg=a)
    # provenance: how each bag's tiles were decoded (the self-check verdict on the "GPU" side)
    from slideflow.io.bags import read_bag_meta

    meta = {d: read_bag_meta(tmp_path / d, "CMU-1-Small-Region") for d in
            ("c0", "c1", "s0", "s1")}
    assert meta["c0"]["decoder"] == meta["s0"]["decoder"] == {"requested": "cpu", "used": "cpu"}
    for d in ("c1", "s1"):
        assert meta[d]["decoder"]["checked_against"] == "libjpeg-turbo"
        assert meta[d]["decoder"]["used"] == "cpu" and meta[d]["decoder"]["max_diff"] == 0


def test_tfrecord_and_slide_sources_give_identical_features(project, ext, tmp_path):
    ds = project.dataset(TILE_PX, TILE_UM)
    ds.extract_tiles(qc="otsu", img_format="png", report=False, progress=False)
    from_tfr = ds.generate_feature_bags(ext, tmp_path / "a", source="tfrecords", progress=False)
    from_slide = ds.generate_feature_bags(ext, tmp_path / "b", source="slides", qc="otsu",
                                          progress=False)
    assert from_tfr.tiles == from_slide.tiles > 0
    a = sf.io.read_bag(tmp_path / "a" / "CMU-1-Small-Region.pt")
    b = sf.io.read_bag(tmp_path / "b" / "CMU-1-Small-Region.pt")
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.features, b.features)
    feats, locs = ext(ds.tfrecords()[0])  # extractor('x.tfrecords') -> rows in record order
    np.testing.assert_array_equal(feats, a.features)
    np.testing.assert_array_equal(locs, a.coords + 449 // 2)


def test_rebuild_reproduces_bit_identical_features(project, ext, tmp_path):
    out = tmp_path / "bags"
    project.dataset(TILE_PX, TILE_UM).generate_feature_bags(ext, out, qc=None, progress=False)
    rebuilt, normalizer = sf.rebuild_extractor(out)
    assert normalizer is None and rebuilt.name == ext.name
    wsi = sf.WSI(CMU, TILE_PX, TILE_UM)
    tiles = np.concatenate([t for t, _ in wsi.tiles()])
    bag = sf.io.read_bag(out / "CMU-1-Small-Region.pt")
    # same batch composition as the bag run: oneDNN kernels may block differently per batch size
    np.testing.assert_array_equal(rebuilt.embed(tiles, batch_size=ext.batch_size), bag.features)
    evil = json.loads((out / "bags_config.json").read_text())
    evil["extractor"] = {"class": "os.system", "kwargs": {"command": "echo pwned"}}
    with pytest.raises(UnsafeConfigError):
        sf.rebuild_extractor(evil)


def test_resume_and_config_mismatch(project, ext, tmp_path):
    ds = project.dataset(TILE_PX, TILE_UM)
    out = tmp_path / "bags"
    ds.generate_feature_bags(ext, out, qc=None, progress=False)
    bag_file = out / "CMU-1-Small-Region.pt"
    mtime = bag_file.stat().st_mtime_ns
    again = ds.generate_feature_bags(ext, out, qc=None, progress=False)
    assert again.skipped == ["CMU-1-Small-Region"] and not again.done
    assert bag_file.stat().st_mtime_ns == mtime
    with pytest.raises(BagsConfigMismatchError, match="qc"):  # the default QC is otsu
        ds.generate_feature_bags(ext, out, progress=False)
    redo = ds.generate_feature_bags(ext, out, force_regenerate=True, progress=False)
    assert list(redo.done) == ["CMU-1-Small-Region"]
    assert len(sf.io.read_bag(bag_file)) < 24


def test_failing_slide_is_reported_and_others_finish(tmp_path, ext, slides):
    folder = tmp_path / "slides"
    folder.mkdir()
    for p in (CMU, TCGA_J2K):
        (folder / p.name).symlink_to(p)
    bad = folder / "truncated.svs"
    bad.write_bytes(CMU.read_bytes()[:4000])
    P = sf.create_project(tmp_path / "p", slides=folder)
    report = P.generate_feature_bags(ext, tile_px=TILE_PX, tile_um=TILE_UM, progress=False)
    assert list(report.done) == ["CMU-1-Small-Region"]
    assert set(report.failed) == {"tcga-cr-7395-01a-01-ts1", "truncated"}
    assert "mpp" in report.failed["tcga-cr-7395-01a-01-ts1"].lower()
    assert (P.root / "pt_files" / ext.name / "bags_config.json").exists()


def test_h5_and_zarr_bags_from_slides(project, ext, tmp_path):
    ds = project.dataset(TILE_PX, TILE_UM)
    ds.generate_feature_bags(ext, tmp_path / "h5", format="h5", qc=None, progress=False)
    ds.generate_feature_bags(ext, tmp_path / "zarr", format="zarr", qc=None, progress=False)
    import h5py

    wsi = sf.WSI(CMU, TILE_PX, TILE_UM)
    with h5py.File(tmp_path / "h5" / "CMU-1-Small-Region.h5") as f:
        np.testing.assert_array_equal(f["coords"][:], wsi.coords)
        assert f["features"].shape == (24, 1280)
        assert f["coords"].attrs["patch_size_level0"] == 448 == int(TILE_UM / 0.499)  # SF3 rule
        assert f["coords"].attrs["patch_size"] == TILE_PX
        assert f["coords"].attrs["level0_width"] == 2220
    z = sf.io.read_bag(tmp_path / "zarr" / "CMU-1-Small-Region.zarr")
    h = sf.io.read_bag(tmp_path / "h5" / "CMU-1-Small-Region.h5")
    np.testing.assert_array_equal(z.features, h.features)
    np.testing.assert_array_equal(z.boxes()[:, 2:] - z.boxes()[:, :2], 448)


def test_dataset_features_in_memory(project, ext, tmp_path):
    ds = project.dataset(TILE_PX, TILE_UM)
    df = sf.DatasetFeatures(ext, ds)
    assert df.slides() == ["CMU-1-Small-Region"]
    feats, coords = df.bags["CMU-1-Small-Region"]
    assert feats.shape == (10, 1280)  # Otsu QC by default, as generate_feature_bags
    out = df.to_torch(tmp_path / "pt")
    back = sf.DatasetFeatures.from_bags(out)
    np.testing.assert_array_equal(back.bags["CMU-1-Small-Region"][0], feats)
    np.testing.assert_array_equal(back.bags["CMU-1-Small-Region"][1], coords)
    assert df.to_df().loc[0, "num_tiles"] == 10


def test_normalizer_round_trips_through_bags_config(project, ext, tmp_path):
    norm = sf.norm.autoselect("reinhard")
    norm.fit(sf.WSI(CMU, 256, 128).qc("otsu").read_tile(3))
    out = tmp_path / "bags"
    ds = project.dataset(TILE_PX, TILE_UM)
    ds.generate_feature_bags(ext, out, normalizer=norm, qc=None, progress=False)
    cfg = json.loads((out / "bags_config.json").read_text())
    assert cfg["normalizer"]["method"] == "reinhard" and cfg["normalizer"]["fit"]
    rebuilt, renorm = sf.rebuild_extractor(out)
    assert renorm.get_fit() == norm.get_fit()
    tiles = np.concatenate([t for t, _ in sf.WSI(CMU, TILE_PX, TILE_UM).tiles()])
    feats = rebuilt.embed(renorm.transform(tiles), batch_size=ext.batch_size)
    np.testing.assert_array_equal(feats, sf.io.read_bag(out / "CMU-1-Small-Region.pt").features)
