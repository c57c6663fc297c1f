"""slide2vec's API guide (seed 000), each example as our own test through
`slideflow.compat.slide2vec`. Offline: hub presets are replaced by the embedded
efficientnet_lite0 tile encoder and by a registered test slide encoder; see docs/porting.md
for the examples that cannot run here (hub weights of virchow2 / moozy, lunit dense encoders,
encoder_registry)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from slideflow.compat.slide2vec import (
    EmbeddedPatient,
    EmbeddedSlide,
    ExecutionOptions,
    Model,
    Pipeline,
    PreprocessingConfig,
    RunResult,
)
from slideflow.errors import InvalidArgumentError

from conftest import CMU

TILE = "efficientnet_lite0"  # offline stand-in for a hub preset (1280-d)
PRE = dict(requested_spacing_um=1.0, requested_tile_size_px=112)


@pytest.fixture(scope="module")
def model():
    return Model.from_preset(TILE)


def test_embed_slide_returns_torch_embedded_slide(model):
    slide = model.embed_slide(CMU, preprocessing=PreprocessingConfig(**PRE))
    assert isinstance(slide, EmbeddedSlide)
    assert isinstance(slide.tile_embeddings, torch.Tensor)
    n = slide.num_tiles
    assert slide.tile_embeddings.shape == (n, 1280) and n > 0
    assert slide.slide_embedding is None  # tile-only encoder
    assert slide.x.shape == slide.y.shape == (n,)
    assert slide.tile_size_lv0 == int(112 / 0.499) and slide.annotation == "tissue"
    assert slide.sample_id == "CMU-1-Small-Region" and slide.mask_path is None


def test_hierarchical_tile_embeddings_are_r_t_d(model):
    pre = PreprocessingConfig(**PRE, region_tile_multiple=2)
    slide = model.embed_slide(CMU, preprocessing=pre)
    r, t, d = slide.tile_embeddings.shape
    assert (t, d) == (4, 1280) and r >= 1
    with pytest.raises(InvalidArgumentError, match=">= 2"):
        PreprocessingConfig(**PRE, region_tile_multiple=1)
    with pytest.raises(InvalidArgumentError, match="requested_region_size_px"):
        PreprocessingConfig(**PRE, region_tile_multiple=2, requested_region_size_px=100)


def test_embed_patient_and_patients(model):
    pre = PreprocessingConfig(**PRE)
    one = model.embed_patient([str(CMU)], patient_id="patient_1", preprocessing=pre)
    assert isinstance(one, EmbeddedPatient) and one.patient_id == "patient_1"
    assert isinstance(one.patient_embedding, torch.Tensor)
    assert one.patient_embedding.shape == (1280,)
    assert list(one.slide_embeddings) == ["CMU-1-Small-Region"]
    many = model.embed_patients([
        {"sample_id": "slide_1a", "image_path": str(CMU), "patient_id": "patient_2"},
        {"sample_id": "slide_1b", "image_path": str(CMU), "patient_id": "patient_1"},
    ], preprocessing=pre)
    assert [p.patient_id for p in many] == ["patient_2", "patient_1"]  # first appearance
    torch.testing.assert_close(many[1].patient_embedding, one.patient_embedding)


def test_pipeline_run_with_manifest(model, tmp_path):
    manifest = tmp_path / "slides.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["sample_id", "image_path"], ["slide_a", str(CMU)]])
    pipeline = Pipeline(
        model=model,
        preprocessing=PreprocessingConfig(**PRE, masks={"min_coverage": {"tissue": 0.1}}),
        execution=ExecutionOptions(output_dir=tmp_path / "outputs/demo", num_gpus=2),
    )
    result = pipeline.run(manifest_path=manifest)
    assert isinstance(result, RunResult) and result.hierarchical_artifacts == []
    (art,) = result.tile_artifacts
    assert art.sample_id == "slide_a" and art.path.exists() and art.num_tiles > 0
    rows = list(csv.DictReader(open(result.process_list_path)))
    assert rows[0]["status"] == "success"
    again = pipeline.run(manifest_path=manifest)  # resumes: same bag reused
    assert again.tile_artifacts[0].num_tiles == art.num_tiles


def test_preprocessing_fields_are_converted_and_validated():
    ours = PreprocessingConfig(requested_spacing_um=0.5, requested_tile_size_px=224,
                               overlap=0.5, masks={"min_coverage": {"tissue": 0.1}}
                               ).to_slideflow()
    assert (ours.tile_px, ours.tile_um, ours.stride_div, ours.qc, ours.qc_threshold) == \
        (224, 112.0, 2, "otsu", 0.1)
    for bad, match in ((dict(overlap=0.3), "stride_div"), (dict(tolerance=0.1), "level_tol"),
                       (dict(backend="asap"), "backend"),
                       (dict(read_tiles_from="x"), "tfrecords"),
                       (dict(segmentation={"method": "sam2"}), "otsu"),
                       (dict(masks={"pixel_mapping": {}}), "ROIs")):
        with pytest.raises(InvalidArgumentError, match=match):
            PreprocessingConfig(**bad)
    with pytest.raises(TypeError):
        PreprocessingConfig(requested_spacing=0.5)  # unknown field names are errors


def test_execution_options_fields():
    exe = ExecutionOptions(output_dir="o", batch_size=8, precision="bf16").to_slideflow()
    assert (exe.batch_size, exe.mixed_precision) == (8, "bf16")
    with pytest.raises(InvalidArgumentError, match="precision"):
        ExecutionOptions(precision="int8")
    with pytest.raises(InvalidArgumentError, match="save_latents"):
        ExecutionOptions(save_latents=True)


def test_from_preset_names():
    assert Model.from_preset("efficientnet_lite0").tile_extractor == \
        "efficientnet_lite0_imagenet"
    prism = Model.from_preset("prism")  # a slide-level preset: tile encoder named by it
    assert prism.slide_encoder == "prism" and prism.tile_extractor is None
    assert Model.from_preset("moozy").slide_encoder == "moozy"  # patient-level preset
    assert Model.from_preset("lunit").tile_extractor == "lunit_vits8"
    assert Model.from_preset("h-optimus-0").tile_extractor == "h_optimus_0"
    with pytest.raises(Exception, match="not-a-model"):
        Model.from_preset("not-a-model")


# ---------------------------------------------------------------- dense and attention outputs
def _tile(px=224, seed=0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (px, px, 3), np.uint8))


def test_dense_tile_features_lunit():
    from slideflow.compat.slide2vec.encoders import encoder_registry

    # offline: random weights stand in for the Hub checkpoint (pretrained=False is ours)
    encoder = encoder_registry.require("lunit")(pretrained=False).to("cpu")
    transform = encoder.get_dense_transform()
    tile = _tile()
    batch = transform(tile).unsqueeze(0).to(encoder.device)
    with torch.no_grad():
        dense = encoder.encode_tiles_dense(batch)
        attn = encoder.encode_tiles_attention(batch)
    assert dense.shape == (1, 384, 28, 28)  # 224 px, patch 8
    assert attn.shape == (1, 6, 28, 28)     # last block, class token, 6 heads
    ext = encoder.extractor                 # the same as slideflow's own dense()/attention()
    raw = np.array(tile)[None]
    np.testing.assert_allclose(dense.numpy(), ext.dense(raw), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(attn.numpy(), ext.attention(raw), rtol=1e-4, atol=1e-6)
    sums = attn.sum(dim=(2, 3))
    assert bool((sums <= 1 + 1e-6).all()) and bool((attn >= 0).all())
    # geometry kept: a 112 x 96 tile gives a 14 x 12 grid (no resize in the dense transform)
    small = transform(np.asarray(_tile(112))[:, :96]).unsqueeze(0)
    assert encoder.encode_tiles_dense(small).shape == (1, 384, 14, 12)
    with pytest.raises(ValueError, match="divisible"):
        encoder.encode_tiles_dense(transform(np.asarray(_tile(100))).unsqueeze(0))


def test_attention_blocks_and_registers():
    from slideflow.compat.slide2vec.encoders import encoder_registry

    # a small ViT with 4 register tokens (timm layout, as Hibou / H-Optimus), random weights
    encoder = encoder_registry.require("timm:vit_small_patch14_reg4_dinov2")(
        pretrained=False, img_size=56)
    batch = encoder.get_dense_transform()(_tile(56)).unsqueeze(0)
    cls_only = encoder.encode_tiles_attention(batch)
    both = encoder.encode_tiles_attention(batch, blocks=(0, -1), include_registers=True)
    heads = cls_only.shape[1]
    assert both.shape == (1, 2 * 5 * heads, 4, 4)  # [block][cls, 4 registers][head]
    torch.testing.assert_close(both[:, 5 * heads:6 * heads], cls_only)  # block -1, class rows


def test_h_optimus_variable_size_setting():
    from slideflow.compat.slide2vec.encoders import encoder_registry

    # the architecture only (meta device): the 1.1B-parameter weights are gated
    fixed = encoder_registry.require("h-optimus-0")(device="meta")
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        fixed.encode_tiles_dense(torch.zeros(1, 3, 112, 112))
    encoder = encoder_registry.require("h-optimus-0")(
        dynamic_img_size=True, allow_non_recommended_settings=True, device="meta")
    assert encoder.extractor.backbone.dynamic_img_size
    assert encoder.extractor.name == "h_optimus_0"


def test_unsupported_encoders_raise_not_implemented():
    from slideflow.compat.slide2vec.encoders import encoder_registry

    assert "lunit" in encoder_registry and "not-a-model" not in encoder_registry
    encoder = encoder_registry.require(TILE)()
    with pytest.raises(NotImplementedError, match="ViT"):
        encoder.encode_tiles_dense(torch.zeros(1, 3, 224, 224))
    with pytest.raises(Exception, match="not-a-model"):
        encoder_registry.require("not-a-model")
