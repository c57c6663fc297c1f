"""MOOZY (patient level): tiles on the grid as MOOZY builds it, 2-D ALiBi, the official
``moozy.pt`` layout (two state dicts side by side, names listed literally from MOOZY's
modules), and patient embeddings through the case transformer. Reduced depth (same code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from state_dict_shapes import layernorm as _ln
from state_dict_shapes import linear as _lin

import slideflow as sf
from slideflow.errors import WeightsError
from slideflow.model.slide_encoders import get_slide_spec
from slideflow.model.slide_encoders.families.moozy import grid_tokens

SMALL = {"depth": 1, "case_depth": 1}


def test_spec_facts():
    spec = get_slide_spec("moozy")
    assert spec.level == "patient" and spec.dim == 768
    assert (spec.tile_extractor, spec.tile_features, spec.tile_px, spec.tile_um) == (
        "lunit_vits8", 384, 224, "20x")
    assert spec.license == "CC-BY-NC-SA-4.0" and not spec.gated
    assert spec.weights.repo_id == "AtlasAnalyticsLab/MOOZY"
    assert spec.weights.filenames == ("moozy.pt",)
    assert spec.build["depth"] == 6 and spec.build["case_depth"] == 3
    assert spec.build["registers"] == 4 and spec.build["heads"] == 12
    full = sf.build_slide_encoder("moozy", pretrained=False, device="meta").model
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # MODEL_CARD.md: slide encoder 42.8M, case transformer 21.3M
    assert round(count(full.slide_encoder) / 1e6, 1) == 42.8
    assert round(count(full.case_transformer) / 1e6, 1) == 21.3


def test_grid_tokens_follow_moozy_grid_rules():
    step = 448
    feats = torch.arange(1, 6, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    feats[3] = 0  # background
    coords = torch.tensor([[900, 0], [0, 0], [448, 448], [448, 0], [896, 0]])
    tokens, cells = grid_tokens(feats, coords, step)
    # row-major; (2, 0) given twice -> the later tile (5) wins; the all-zero tile dropped
    assert cells.tolist() == [[0, 0], [2, 0], [1, 1]]
    assert tokens[:, 0].tolist() == [2.0, 5.0, 3.0]
    with pytest.raises(ValueError, match="off a grid"):
        grid_tokens(feats, coords + torch.tensor([[0, 0], [0, 0], [0, 0], [0, 0], [120, 0]]),
                    step)


def test_alibi_bias_and_permutation_invariance():
    # 2 blocks: the class token's own row has no bias, so positions reach it from block 2
    enc = sf.build_slide_encoder("moozy", pretrained=False, device="cpu", depth=2,
                                 case_depth=1)
    alibi = enc.model.slide_encoder.pos_bias
    slopes = [2.0 ** -(i + 1) for i in range(8)]  # Press et al.: 12 heads = 8 + 4 of 16
    assert alibi.slopes[:8, 0].tolist() == pytest.approx([-s for s in slopes])
    bias = alibi.bias(torch.tensor([[0, 0], [3, 4]]), prefix=5)  # class + 4 registers
    assert bias.shape == (1, 12, 7, 7)
    assert torch.all(bias[0, :, :5] == 0) and torch.all(bias[0, :, :, :5] == 0)
    assert bias[0, 0, 5, 6].item() == pytest.approx(-slopes[0] * 5.0)  # 5 cells apart
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 384)).astype(np.float32)
    coords = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2) * 448
    a = enc(feats, coords, 448)
    p = rng.permutation(12)
    np.testing.assert_allclose(enc(feats[p], coords[p], 448), a, rtol=1e-5, atol=1e-5)
    assert not np.allclose(enc(feats, coords * 2, 448), a, atol=1e-5)  # positions matter
    with pytest.raises(ValueError, match="patch_size_level0"):
        enc(feats, coords)




def _block(prefix, layerscale):
    d = {**_ln(f"{prefix}.norm1", 768), **_ln(f"{prefix}.norm2", 768),
         **_lin(f"{prefix}.fc1", 3072, 768), **_lin(f"{prefix}.fc2", 768, 3072)}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        d.update(_lin(f"{prefix}.{proj}", 768, 768))
    if layerscale:
        d.update({f"{prefix}.ls_attn.gamma": (768,), f"{prefix}.ls_mlp.gamma": (768,)})
    return d


def moozy_official(depth=1, case_depth=1):
    # MOOZYSlideEncoder: input_proj.0, cls/register/mask tokens, pos_bias.slopes (a buffer,
    # shared by every block -> blocks.<i>.pos_bias.slopes), blocks.<i>.{norm1,norm2,q/k/v/out
    # _proj,fc1,fc2}, norm. CaseAggregator: case_token, blocks (+ LayerScale gammas), norm.
    slide = {**_lin("input_proj.0", 768, 384), "cls_token": (1, 1, 768),
             "register_tokens": (1, 4, 768), "mask_token": (1, 1, 768),
             "pos_bias.slopes": (12, 1), **_ln("norm", 768)}
    for i in range(depth):
        slide.update({**_block(f"blocks.{i}", False), f"blocks.{i}.pos_bias.slopes": (12, 1)})
    case = {"case_token": (1, 1, 768), **_ln("norm", 768)}
    for i in range(case_depth):
        case.update(_block(f"blocks.{i}", True))
    return slide, case


def test_official_checkpoint_loads_and_embeds_patients(tmp_path):
    slide_shapes, case_shapes = moozy_official()
    g = torch.Generator().manual_seed(5)
    slide = {k: torch.randn(s, generator=g) * 0.02 for k, s in slide_shapes.items()}
    slopes = -torch.tensor([2.0 ** -(i + 1) for i in range(8)] +
                           [2.0 ** -((2 * i + 1) / 2) for i in range(4)]).unsqueeze(1)
    for k in slide:
        if k.endswith("pos_bias.slopes"):
            slide[k] = slopes
    case = {k: torch.randn(s, generator=g) * 0.02 for k, s in case_shapes.items()}
    payload = {"teacher_slide_encoder": slide, "case_transformer": case,
               "slide_encoder_config": {"d_model": 768, "n_layers": 1},
               "case_transformer_config": {"num_layers": 1}}
    path = tmp_path / "moozy.pt"
    torch.save(payload, path)
    enc = sf.build_slide_encoder("moozy", weights=path, device="cpu", **SMALL)
    own = enc.state_dict()
    expected = {f"slide_encoder.{k}" for k in slide} | {f"case_transformer.{k}" for k in case}
    assert set(own) == expected
    torch.testing.assert_close(own["case_transformer.case_token"], case["case_token"])
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(3), np.arange(2)), -1).reshape(-1, 2) * 448
    vecs = {f"s{i}": enc(rng.normal(size=(6, 384)).astype(np.float32), coords, 448)
            for i in range(3)}
    patient = sf.embed_patient([(k, v) for k, v in vecs.items()], "P1", enc)
    with torch.no_grad():
        ref = enc.model.case_transformer(torch.from_numpy(np.stack(list(vecs.values()))))
    np.testing.assert_allclose(patient.patient_embedding, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(patient.patient_embedding, np.mean(list(vecs.values()), 0))
    # embed_patients with every slide embedding given builds only the model
    manifest = [{"patient_id": "P1", "sample_id": k, "image_path": f"/nowhere/{k}.svs"}
                for k in vecs]
    [again] = sf.embed_patients(manifest, slide_encoder=enc, slide_embeddings=vecs)
    np.testing.assert_allclose(again.patient_embedding, patient.patient_embedding, rtol=1e-6)
    # a checkpoint without the case transformer is refused, naming the part
    torch.save({"teacher_slide_encoder": slide}, tmp_path / "stage1.pt")
    with pytest.raises(WeightsError, match="case_transformer"):
        sf.build_slide_encoder("moozy", weights=tmp_path / "stage1.pt", device="cpu", **SMALL)
    assert math.isclose(float(own["slide_encoder.pos_bias.slopes"][8, 0]), -2 ** -0.5,
                        rel_tol=1e-6)
