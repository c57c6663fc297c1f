"""Slide and patient embeddings on the real slides (issue 14): bag reuse vs recompute, geometry
and extractor mismatches, outputs and their config, patients in manifest order, the in-memory
API with regions, the CLI, Slideflow's two-stage spelling, and ViT dense/attention outputs.

Tile features come from the embedded EfficientNet-Lite0 (real weights) on small tiles; a test
slide encoder (mean pooling that requires Lite0 features at 112 px / 224 um) stands in for the
foundation slide encoders, whose tile extractors need gated weights.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import slideflow as sf
from slideflow.errors import TileMismatchError
from slideflow.model.slide_encoders import (
    SlideEncoderSpec,
    register_slide_encoder,
    unregister_slide_encoder,
)

from conftest import CMU

LITE0 = "efficientnet_lite0_imagenet"
TILE_PX, TILE_UM = 112, 224


@pytest.fixture(scope="module")
def lite_mean():
    spec = SlideEncoderSpec(name="lite0_mean_test", family="mean", dim=None,
                            license="Apache-2.0", tile_extractor=LITE0, tile_features=1280,
                            tile_px=TILE_PX, tile_um=TILE_UM, geometry_strict=True)
    register_slide_encoder(spec, replace=True)
    yield spec.name
    unregister_slide_encoder(spec.name)


@pytest.fixture(scope="module")
def ext():
    return sf.build_feature_extractor(LITE0, batch_size=16)


@pytest.fixture()
def dataset(cmu_slides_project):
    return cmu_slides_project.dataset(TILE_PX, TILE_UM)


def test_mean_equals_bag_mean_and_config_rebuilds(dataset, ext, tmp_path):
    bags = tmp_path / "bags"
    dataset.generate_feature_bags(ext, bags, qc="otsu", progress=False)
    out = tmp_path / "emb"
    report = sf.generate_slide_embeddings(bags, "mean", out)
    assert report.done == ["CMU-1-Small-Region"] and not report.failed
    bag = sf.io.read_bag(bags / "CMU-1-Small-Region.pt")
    vec = torch.load(out / "CMU-1-Small-Region.pt", weights_only=True).numpy()
    np.testing.assert_allclose(vec, bag.features.mean(axis=0), rtol=1e-6)
    cfg = json.loads((out / "slide_embeddings.json").read_text())["encoders"]["mean"]
    assert cfg["tile_bags_config"]["provenance"]["extractor"] == LITE0
    assert cfg["tile_bags"] == [str(bags.resolve())]
    from slideflow.slide_embeddings import rebuild_slide_encoders

    assert list(rebuild_slide_encoders(out)) == ["mean"]
    # existing outputs are kept; overwrite recomputes; h5 output holds slide_features/<name>
    assert sf.generate_slide_embeddings(bags, "mean", out).skipped == ["CMU-1-Small-Region"]
    sf.generate_slide_embeddings(bags, "mean", out, format="h5")
    from slideflow.slide_embeddings import read_slide_embedding

    np.testing.assert_array_equal(read_slide_embedding(out / "CMU-1-Small-Region.h5", "mean"),
                                  vec)
    # Slideflow's spelling on the encoder object
    enc = sf.build_slide_encoder("mean")
    enc.generate_and_save(str(bags), tmp_path / "sf_style")
    np.testing.assert_array_equal(
        torch.load(tmp_path / "sf_style" / "CMU-1-Small-Region.pt", weights_only=True).numpy(),
        vec)


def test_dataset_bags_reused_then_recomputed(dataset, lite_mean, tmp_path):
    out, bags = tmp_path / "emb", tmp_path / "tile_bags"
    first = sf.generate_slide_embeddings(dataset, lite_mean, out, bags_dir=bags, qc="otsu",
                                         progress=False)
    assert list(first.bags.done) == ["CMU-1-Small-Region"] and first.done
    vec = torch.load(out / "CMU-1-Small-Region.pt", weights_only=True).numpy()
    second = sf.generate_slide_embeddings(dataset, lite_mean, out, bags_dir=bags, qc="otsu",
                                          overwrite=True, progress=False)
    assert second.bags.skipped == ["CMU-1-Small-Region"] and not second.bags.done  # reused
    np.testing.assert_array_equal(
        torch.load(out / "CMU-1-Small-Region.pt", weights_only=True).numpy(), vec)
    (bags / "CMU-1-Small-Region.pt").unlink()
    third = sf.generate_slide_embeddings(dataset, lite_mean, out, bags_dir=bags, qc="otsu",
                                         overwrite=True, progress=False)
    assert list(third.bags.done) == ["CMU-1-Small-Region"]  # the missing bag is recomputed
    np.testing.assert_allclose(
        torch.load(out / "CMU-1-Small-Region.pt", weights_only=True).numpy(), vec, rtol=1e-5)


def test_geometry_and_extractor_mismatches_are_errors(tmp_path, cmu_slides_project, ext,
                                                     lite_mean):
    other = cmu_slides_project.dataset(56, 224)
    with pytest.raises(TileMismatchError, match="112-px tiles"):
        sf.generate_slide_embeddings(other, lite_mean, tmp_path / "o", progress=False)
    bags = tmp_path / "bags56"
    other.generate_feature_bags(ext, bags, progress=False)
    with pytest.raises(TileMismatchError, match="tile_px=112"):
        sf.generate_slide_embeddings(bags, lite_mean, tmp_path / "o2")
    # bags recorded as another extractor's features
    cfg = json.loads((bags / "bags_config.json").read_text())
    cfg["provenance"]["extractor"] = "resnet50_imagenet"
    cfg["tile_px"] = TILE_PX
    (bags / "bags_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TileMismatchError, match="resnet50_imagenet"):
        sf.generate_slide_embeddings(bags, lite_mean, tmp_path / "o3")
    assert not (tmp_path / "o3" / "CMU-1-Small-Region.pt").exists()


def test_embed_slide_with_regions(ext, lite_mean, slides):
    pre = sf.PreprocessingConfig(TILE_PX, TILE_UM, qc="otsu", region_tile_multiple=2)
    emb = sf.embed_slide(CMU, slide_encoder=lite_mean, preprocessing=pre)
    wsi = sf.WSI(CMU, TILE_PX, TILE_UM).qc("otsu")
    assert emb.num_tiles == len(wsi) == len(emb.tile_embeddings)
    np.testing.assert_array_equal(np.stack([emb.x, emb.y], 1), wsi.coords)
    assert emb.tile_size_lv0 == wsi.full_extract_px and emb.sample_id == "CMU-1-Small-Region"
    np.testing.assert_allclose(emb.slide_embedding, emb.tile_embeddings.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(emb.tile_embeddings, ext(wsi).rows)
    r = emb.region_embeddings
    assert r.shape[1:] == (4, 1280) and emb.region_mask.sum() == emb.num_tiles
    size = emb.tile_size_lv0
    for i, (x, y) in enumerate(zip(emb.x, emb.y)):  # every tile sits in its parent region
        rx, ry = emb.region_x, emb.region_y
        j = np.nonzero((rx <= x) & (x < rx + 2 * size) & (ry <= y) & (y < ry + 2 * size))[0]
        assert len(j) == 1
        slot = ((y - ry[j[0]]) // size) * 2 + (x - rx[j[0]]) // size
        np.testing.assert_array_equal(r[j[0], slot], emb.tile_embeddings[i])
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.tile_px = 5
    with pytest.raises(ValueError):
        sf.PreprocessingConfig(tile_px=-1)
    with pytest.raises(ValueError):
        sf.ExecutionConfig(batch_size=0)


def test_execution_config_reader_threads_are_num_threads():
    """Reader threads carry the name they have everywhere else; the old `num_workers=` still
    works with one DeprecationWarning, and two different values are refused."""
    assert sf.ExecutionConfig(num_threads=3).num_threads == 3
    with pytest.warns(DeprecationWarning, match="num_workers is the old name of num_threads"):
        old = sf.ExecutionConfig(8, num_workers=3)
    assert old == sf.ExecutionConfig(8, num_threads=3)
    assert dataclasses.replace(old, device="cpu").num_threads == 3
    with pytest.raises(sf.errors.InvalidArgumentError, match="give num_threads only"):
        sf.ExecutionConfig(num_threads=2, num_workers=3)
    for bad in (0, 2.5, True, "abc"):
        with pytest.raises(sf.errors.InvalidArgumentError,
                           match=f"num_threads must be an integer >= 1, got {bad!r}"):
            sf.ExecutionConfig(num_threads=bad)
    with pytest.raises(sf.errors.InvalidArgumentError, match="batch_size must be an integer"):
        sf.ExecutionConfig(batch_size="x")
    with pytest.raises(sf.errors.InvalidArgumentError, match="max_tiles must be an integer"):
        sf.PreprocessingConfig(max_tiles=0.5)


def test_patients_grouped_in_first_appearance_order(lite_mean, slides, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,sample_id,image_path\n"
                        f"P2,a,{CMU}\nP1,b,{CMU}\nP2,c,{CMU}\n")
    pre = sf.PreprocessingConfig(TILE_PX, TILE_UM, qc="otsu", max_tiles=6)
    known = {"c": np.arange(1280, dtype=np.float32)}  # a precomputed slide embedding
    patients = sf.embed_patients(manifest, slide_encoder=lite_mean, preprocessing=pre,
                                 slide_embeddings=known)
    assert [p.patient_id for p in patients] == ["P2", "P1"]
    assert list(patients[0].slide_embeddings) == ["a", "c"]
    assert list(patients[1].slide_embeddings) == ["b"]
    np.testing.assert_array_equal(patients[0].slide_embeddings["c"], known["c"])
    np.testing.assert_allclose(patients[0].patient_embedding,
                               (patients[0].slide_embeddings["a"] + known["c"]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(patients[1].patient_embedding,
                                  patients[1].slide_embeddings["b"])
    one = sf.embed_patient([("x", np.ones(3)), ("y", np.zeros(3))], patient_id="Q")
    np.testing.assert_array_equal(one.patient_embedding, np.full(3, 0.5, np.float32))


def test_cli_encode_slide_and_patient(lite_mean, slides, tmp_path):
    from slideflow.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["encode-slide", str(CMU), "-o", str(out), "--slide-encoder",
                              f"{lite_mean},mean", "-e", LITE0])
    assert res.exit_code == 0, res.output
    a = torch.load(out / lite_mean / "CMU-1-Small-Region.pt", weights_only=True)
    b = torch.load(out / "mean" / "CMU-1-Small-Region.pt", weights_only=True)
    torch.testing.assert_close(a, b)
    bag = sf.io.read_bag(out / "tile_bags" / LITE0 / "CMU-1-Small-Region.pt")
    np.testing.assert_allclose(a.numpy(), bag.features.mean(0), rtol=1e-6)
    bad = runner.invoke(app, ["encode-slide", str(CMU), "-o", str(out), "--slide-encoder",
                              f"{lite_mean},titan"])
    assert bad.exit_code != 0 and "different tiles" in bad.output
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"patient_id,image_path\nZ,{CMU}\n")
    res = runner.invoke(app, ["encode-patient", str(manifest), "-o", str(tmp_path / "pat"),
                              "--slide-encoder", lite_mean, "--tile-px", "112", "--tile-um",
                              "224"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "pat" / "patients.json").read_text())
    assert meta["patients"][0]["patient_id"] == "Z"
    assert torch.load(tmp_path / "pat" / "Z.pt", weights_only=True).shape == (1280,)


def test_slideflow_two_stage_spelling(slides):
    spec = SlideEncoderSpec(name="lite0_pair_test", family="mean", dim=None,
                            license="Apache-2.0", tile_extractor=LITE0, tile_features=1280,
                            slideflow_pair=True)
    register_slide_encoder(spec, replace=True)
    try:
        pair = sf.build_feature_extractor(LITE0)
        assert pair.slide.name == "lite0_pair_test" and pair.tile.name == LITE0
        assert pair.num_features == 1280  # everything else is the tile extractor's
        wsi = sf.WSI(CMU, TILE_PX, TILE_UM).qc("otsu")
        vec = pair(wsi)
        np.testing.assert_allclose(vec, pair.tile(wsi).rows.mean(0), rtol=1e-6)
        tile_only = sf.build_feature_extractor(LITE0 + ".tile")
        assert type(tile_only).__name__ == "FeatureExtractor"
        assert tile_only.tile is tile_only
    finally:
        unregister_slide_encoder(spec.name)
    with pytest.raises(AttributeError, match="no slide encoder"):
        _ = sf.build_feature_extractor(LITE0).slide


def test_vit_dense_and_exact_attention():
    vit = sf.build_feature_extractor("vit", pretrained=False, device="cpu")
    tiles = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    dense = vit.dense(tiles)
    assert dense.shape == (2, 384, 14, 14)
    net = vit.backbone
    with torch.inference_mode():
        tokens = net.forward_features(vit.preprocess(torch.from_numpy(tiles).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(dense[:, :, 3, 5], tokens[:, 1 + 3 * 14 + 5].numpy(),
                               rtol=1e-4, atol=1e-5)
    att = vit.attention(tiles)
    assert att.shape == (2, 6, 14, 14)
    sums = att.sum(axis=(2, 3))
    assert np.all(sums <= 1 + 1e-6) and np.all(sums > 0)
    # reference: timm's explicit (non-fused) path, probabilities captured at attn_drop
    attn = net.blocks[-1].attn
    seen = {}
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.setdefault("p", o))
    attn.fused_attn = False
    try:
        with torch.inference_mode():
            net.forward_features(vit.preprocess(torch.from_numpy(tiles).permute(0, 3, 1, 2)))
    finally:
        attn.fused_attn = True
        handle.remove()
    ref = seen["p"][:, :, 0, 1:].reshape(2, 6, 14, 14).numpy()
    np.testing.assert_allclose(att, ref, rtol=1e-4, atol=1e-6)
    both = vit.attention(tiles, blocks=(0, -1))
    assert both.shape == (2, 2, 6, 14, 14)
    np.testing.assert_allclose(both[:, 1], att, rtol=1e-6)
    with pytest.raises(TypeError, match="ViT"):
        sf.build_feature_extractor(LITE0).dense(tiles)
