"""Slide-encoder registry and architectures (issue 14): dims with random weights, and state
dicts written here in each model's OFFICIAL key layout (names and shapes read from the authors'
code, listed literally below, not taken from our modules) load with nothing missing or extra.

TITAN is tested at reduced depth (2 of 6 blocks; same code path) to stay fast on 2 CPUs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from state_dict_shapes import layernorm as _ln
from state_dict_shapes import linear as _lin

import slideflow as sf
from slideflow.errors import SlideEncoderNotFound, WeightsError


def test_list_slide_encoders_without_torch():
    code = ("import sys, slideflow as sf; df = sf.list_slide_encoders(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "print(','.join(sorted(df.name)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert set(out.split(",")) >= {"mean", "titan", "feather", "madeleine", "chief"}


def test_specs_carry_their_tile_needs_and_licences():
    df = sf.list_slide_encoders().set_index("name")
    assert df.loc["titan", "tile_extractor"] == "conch_v15"
    assert (df.loc["titan", "tile_px"], df.loc["titan", "tile_um"]) == (512, "20x")
    assert df.loc["titan", "positional"] == "grid" and df.loc["titan", "dim"] == 768
    assert df.loc["madeleine", "tile_extractor"] == "conch"
    assert df.loc["chief", "distribution"] == "slideflow-noncommercial"  # NC weights
    assert df.loc["feather", "distribution"] == "slideflow-noncommercial"
    assert df.loc["mean", "license"] == "Apache-2.0"
    from slideflow.model.slide_encoders import get_slide_spec

    for name in ("titan", "feather", "madeleine", "chief"):
        spec = get_slide_spec(name)
        assert spec.citation.startswith("@") and spec.reference, name


def test_external_entries_agree_with_the_plugin_specs():
    from slideflow.model.slide_encoders.catalog import EXTERNAL
    from slideflow.model.slide_encoders.registry import get_slide_spec

    for entry in EXTERNAL:
        spec = get_slide_spec(entry.name)
        assert (spec.distribution, spec.license, spec.dim, spec.tile_extractor) == (
            entry.distribution, entry.license, entry.dim, entry.tile_extractor), entry.name
    df = sf.list_slide_encoders().set_index("name")
    assert df.loc["mean", "weights"] == "none (no parameters)"


def test_unknown_name_suggests():
    with pytest.raises(SlideEncoderNotFound, match="titan"):
        sf.build_slide_encoder("titen")


DIMS = {"mean": None, "feather": 512, "chief": 512, "madeleine": 512, "titan": 768}


@pytest.mark.parametrize("name", sorted(DIMS))
def test_dims_with_random_weights_numpy_and_torch(name):
    kw = {"depth": 1} if name == "titan" else {}
    enc = sf.build_slide_encoder(name, pretrained=False, device="cpu", **kw)
    d = enc.tile_features or 24
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(29, d)).astype(np.float32)
    coords = rng.integers(0, 12, size=(29, 2)) * 512
    out = enc(feats, coords, 512)
    assert isinstance(out, np.ndarray) and out.shape == (DIMS[name] or d,)
    assert np.isfinite(out).all()
    t = enc(torch.from_numpy(feats), torch.from_numpy(coords), 512)
    assert isinstance(t, torch.Tensor) and t.shape == out.shape
    np.testing.assert_allclose(t.numpy(), out, rtol=1e-5, atol=1e-6)
    if name == "mean":
        np.testing.assert_allclose(out, feats.mean(axis=0), rtol=1e-6)


def test_wrong_tile_width_is_refused():
    enc = sf.build_slide_encoder("feather", pretrained=False, device="cpu")
    with pytest.raises(Exception, match="768-d tile features"):
        enc(np.zeros((4, 512), np.float32))


def test_unknown_model_option_is_an_error():
    with pytest.raises(TypeError, match="unknown options"):
        sf.build_slide_encoder("feather", pretrained=False, device="cpu", depth=3)


# ------------------------------------------------------------------ official key layouts


def feather_official():
    # MIL-Lab ABMILModel: self.model = ABMIL(in 768, embed 512, attn 384, gated, 1 head),
    # patch_embed = create_mlp(...) -> Sequential(Linear, ReLU); no classifier (FEATHER).
    return {**_lin("model.patch_embed.0", 512, 768),
            **_lin("model.global_attn.attention_a.0", 384, 512),
            **_lin("model.global_attn.attention_b.0", 384, 512),
            **_lin("model.global_attn.attention_c", 1, 384)}


def chief_official():
    # hms-dbmi/CHIEF models/CHIEF.py, size_arg 'small' = [768, 512, 256], gate, n_classes 2
    return {"organ_embedding": (19, 768), **_lin("attention_net.0", 512, 768),
            **_lin("attention_net.3.attention_a.0", 256, 512),
            **_lin("attention_net.3.attention_b.0", 256, 512),
            **_lin("attention_net.3.attention_c", 1, 256), **_lin("classifiers", 2, 512),
            **_lin("instance_classifiers.0", 2, 512), **_lin("instance_classifiers.1", 2, 512),
            **_lin("att_head.fc1", 256, 512), **_lin("att_head.fc2", 1, 256),
            **_lin("text_to_vision.0", 512, 768)}


def madeleine_official():
    # MADELEINE models/Model.py: n_heads 4, patch_embedding_dim 512, hidden 512
    d = {**_lin("token_projector", 128, 2048), **_lin("projector", 512, 2048),
         **_lin("wsi_embedders.pre_attn.0", 512, 512), **_ln("wsi_embedders.pre_attn.1", 512),
         **_lin("wsi_embedders.pre_attn.4", 512, 512), **_ln("wsi_embedders.pre_attn.5", 512),
         **_lin("wsi_embedders.pre_attn.8", 2048, 512),
         **_ln("wsi_embedders.pre_attn.9", 2048)}
    for i in range(4):
        d.update({**_lin(f"wsi_embedders.attn.{i}.attention_a.0", 512, 512),
                  **_lin(f"wsi_embedders.attn.{i}.attention_b.0", 512, 512),
                  **_lin(f"wsi_embedders.attn.{i}.attention_c", 1, 512)})
    return d


def titan_official(depth):
    # MahmoodLab/TITAN vision_transformer.py: vision tower under 'vision_encoder.', blocks in
    # CustomSequential.modules_list, AttentionalPooler x2 (nn.MultiheadAttention packed
    # in_proj), proj; plus the text tower that a slide encoder does not build.
    v = "vision_encoder"
    d = {f"{v}.cls_token": (1, 1, 768), f"{v}.proj": (768, 768),
         **_lin(f"{v}.patch_embed.0", 768, 768), **_ln(f"{v}.norm", 768)}
    for i in range(depth):
        b = f"{v}.blocks.modules_list.{i}"
        d.update({**_ln(f"{b}.norm1", 768), **_lin(f"{b}.attn.qkv", 2304, 768),
                  **_lin(f"{b}.attn.proj", 768, 768), **_ln(f"{b}.norm2", 768),
                  **_lin(f"{b}.mlp.fc1", 3072, 768), **_lin(f"{b}.mlp.fc2", 768, 3072)})
    for pool, q in (("attn_pool", 128), ("attn_pool_contrastive", 1)):
        p = f"{v}.{pool}"
        d.update({f"{p}.query": (q, 768), f"{p}.attn.in_proj_weight": (2304, 768),
                  f"{p}.attn.in_proj_bias": (2304,), **_lin(f"{p}.attn.out_proj", 768, 768),
                  **_ln(f"{p}.ln_q", 768), **_ln(f"{p}.ln_k", 768)})
    d["text_encoder.token_embedding.weight"] = (16, 768)  # ignored by design
    return d


OFFICIAL = {"feather": (feather_official, {}), "chief": (chief_official, {}),
            "madeleine": (madeleine_official, {}), "titan": (lambda: titan_official(2),
                                                             {"depth": 2})}


def _save(tmp_path, shapes, name, extra=None, drop=None):
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items() if k != drop}
    sd.update(extra or {})
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": sd}, path)
    return path, sd


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_layout_loads_strictly(tmp_path, name):
    keys, kw = OFFICIAL[name]
    shapes = keys()
    path, sd = _save(tmp_path, shapes, name)
    enc = sf.build_slide_encoder(name, weights=path, device="cpu", **kw)
    assert enc.pretrained and enc.weights_sha256
    own = enc.state_dict()
    assert set(own) == {k for k in shapes if not k.startswith("text_encoder.")}
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k])
    d = enc.tile_features
    out = enc(np.random.default_rng(0).normal(size=(9, d)).astype(np.float32),
              np.arange(18).reshape(9, 2) * 512, 512)
    assert out.shape == (enc.num_features,)
    # one tensor missing, or one unexpected, is an error naming it
    first = next(iter(shapes))
    missing, _ = _save(tmp_path, shapes, name + "_missing", drop=first)
    with pytest.raises(WeightsError, match="missing"):
        sf.build_slide_encoder(name, weights=missing, device="cpu", **kw)
    extra, _ = _save(tmp_path, shapes, name + "_extra", extra={"bogus.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match="bogus.weight"):
        sf.build_slide_encoder(name, weights=extra, device="cpu", **kw)


def test_titan_grid_and_alibi_follow_the_reference():
    from slideflow.model.slide_encoders.families.titan import alibi_bias, alibi_slopes, feature_grid

    assert alibi_slopes(12)[:8] == alibi_slopes(8)  # Press et al. interleaving
    assert alibi_slopes(8)[0] == 0.5
    feats = torch.ones(3, 4)
    coords = torch.tensor([[1024, 512], [0, 0], [2048, 0]])  # x, y level-0 top-left
    grid, mask = feature_grid(feats, coords, 512)
    assert grid.shape == (4, 5, 2)  # C, W (x cells 0..4), H (y cells 0..1)
    assert mask.nonzero().tolist() == [[0, 0], [2, 1], [4, 0]]
    bias = alibi_bias(mask, 2)
    assert bias.shape == (2, 4, 4) and torch.all(bias[:, 0] == 0) and torch.all(bias[:, :, 0] == 0)
    # tokens x-major: (0,0), (2,1), (4,0); distance (0,0)-(4,0) = 4 cells
    slopes = alibi_slopes(2)
    assert bias[1, 1, 3].item() == pytest.approx(-4 * slopes[1])
    assert bias[0, 1, 2].item() == pytest.approx(-np.sqrt(5) * slopes[0])


def test_titan_is_permutation_invariant_and_uses_positions():
    enc = sf.build_slide_encoder("titan", pretrained=False, device="cpu", depth=1)
    rng = np.random.default_rng(3)
    f = rng.normal(size=(6, 768)).astype(np.float32)
    c = np.array([[0, 0], [512, 0], [1024, 0], [0, 512], [512, 512], [1536, 1024]])
    a = enc(f, c, 512)
    p = rng.permutation(6)
    np.testing.assert_allclose(enc(f[p], c[p], 512), a, rtol=1e-4, atol=1e-5)
    assert not np.allclose(enc(f, c * 3, 512), a, atol=1e-5)  # distances change the bias
    with pytest.raises(ValueError, match="coords"):
        enc(f)


def test_rebuild_slide_encoder_is_safe(tmp_path):
    path, _ = _save(tmp_path, feather_official(), "feather")
    enc = sf.build_slide_encoder("feather", weights=path, device="cpu")
    again = sf.rebuild_slide_encoder(enc.dump_config(), device="cpu")
    f = np.ones((3, 768), np.float32)
    np.testing.assert_array_equal(again(f), enc(f))
    from slideflow.errors import UnsafeConfigError

    with pytest.raises(UnsafeConfigError):
        sf.rebuild_slide_encoder({"class": "os.system", "kwargs": {"name": "feather"}})
    with pytest.raises(UnsafeConfigError):
        sf.rebuild_slide_encoder({"class": "slideflow.model.SlideEncoder",
                                  "kwargs": {"name": "feather", "builder": "os:system"}})
