"""Prov-GigaPath slide encoder (LongNet): dilated attention against a brute-force reading of
the reference semantics, sin-cos positions against the MAE table, the official checkpoint
layout (key names listed literally from prov-gigapath's LongNetViT + torchscale), and
Slideflow's ``gigapath`` / ``.tile`` / ``.slide`` spelling.

Models run at reduced width or depth (same code path) to stay fast on 2 CPUs.
"""

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
from slideflow.model.slide_encoders.families.gigapath import grid_cells, sincos_2d
from slideflow.model.slide_encoders.families.longnet import (
    DilatedAttention,
    optimal_segment_lengths,
)


def test_segment_lengths_and_spec_facts():
    # get_optimal_segment_length(262144, 256): 2 ** linspace(10, 20, 5), truncated
    assert optimal_segment_lengths() == (1024, 5792, 32768, 185363, 1048576)
    spec = get_slide_spec("gigapath_slide")
    assert (spec.dim, spec.tile_extractor, spec.tile_features) == (768, "gigapath", 1536)
    assert (spec.tile_px, spec.tile_um, spec.positional) == (256, "20x", "level0")
    assert spec.build["heads"] == 16 and spec.build["depth"] == 12
    assert tuple(spec.build["dilated_ratios"]) == (1, 2, 4, 8, 16)
    assert spec.weights.repo_id == "prov-gigapath/prov-gigapath"
    assert spec.weights.filenames == ("slide_encoder.pth",)
    assert spec.gated and spec.slideflow_pair and "non-commercial" in spec.license
    assert spec.distribution == "slideflow-noncommercial"
    full = sf.build_slide_encoder("gigapath_slide", pretrained=False, device="meta").model
    assert 86e6 < sum(p.numel() for p in full.parameters()) < 87e6  # slide2vec: 87M
    for alias in ("gigapath", "gigapath.slide", "gigapath_slide_enc12l768d"):
        assert get_slide_spec(alias).name == "gigapath_slide"


# ------------------------------------------------------------- dilated attention reference
def _reference_attention(q, k, v, segments, ratios):
    """Loop-by-loop reading of torchscale's DilatedAttention (no padding tricks shared with
    the implementation): q, k, v (L, H, d) -> (L, H, d)."""
    length, heads, d = q.shape
    scale = d ** -0.5
    outs, lses = [], []
    for w, r in zip(segments, ratios):
        s = min(w, length)
        n = math.ceil(length / s)
        sp = math.ceil(s / r) * r
        hg = math.ceil(heads / r)
        out = torch.zeros(length, heads, d, dtype=torch.float64)
        lse = torch.full((length, heads), -1e8, dtype=torch.float64)

        def token(x, j, p, s=s):  # position p of segment j (zeros past segment / sequence)
            i = j * s + p
            return x[i] if p < s and i < length else torch.zeros(d, dtype=torch.float64)

        for j in range(n):
            for h in range(heads):
                g = h // hg
                ps = list(range(g, sp, r))
                keys = torch.stack([token(k[:, h], j, p) for p in ps])
                vals = torch.stack([token(v[:, h], j, p) for p in ps])
                for p in ps:
                    dest = j * sp + p  # where the dense output lands (then cut to L)
                    if dest >= length:
                        continue
                    sc = keys @ token(q[:, h], j, p) * scale
                    ell = torch.logsumexp(sc, 0)
                    out[dest, h] = torch.softmax(sc, 0) @ vals
                    lse[dest, h] = ell if ell != 0 else -1e8
        outs.append(out)
        lses.append(lse)
    w = torch.softmax(torch.stack(lses), dim=0)
    return sum(o * wi.unsqueeze(-1) for o, wi in zip(outs, w))


@pytest.mark.parametrize("length,heads,segments,ratios", [
    (13, 4, (4, 5, 16), (1, 2, 4)),   # several segments; 5 % 2 != 0 shifts later segments
    (9, 3, (4, 8), (1, 2)),           # heads padded to a multiple of the ratio
    (7, 4, (1024, 2048), (1, 4)),     # segments longer than the sequence
])
def test_dilated_attention_matches_reference(length, heads, segments, ratios):
    torch.manual_seed(0)
    dim = heads * 2
    attn = DilatedAttention(dim, heads, segments, ratios).double().eval()
    x = torch.randn(1, length, dim, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x)
        split = (length, heads, 2)
        q, k, v = (p(x[0]).reshape(split) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        ref = _reference_attention(q, k, v, segments, ratios).reshape(1, length, dim)
        ref = attn.out_proj(attn.inner_attn_ln(ref))
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_positions_follow_the_mae_table():
    g, dim = 7, 16
    # MAE get_2d_sincos_pos_embed(dim, g): meshgrid(w, h) -> first half from the column
    # grid, second half from the row grid, each [sin, cos] of pos * 10000^(-k / (dim/4))
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")

    def half(pos):
        a = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(a), np.cos(a)], axis=1)

    table = np.concatenate([half(cols), half(rows)], axis=1)  # flat index row * g + col
    coords = torch.tensor([[0, 0], [256 * 3 + 17, 256 * 5], [256 * 6, 255], [512, 256 * 6]])
    r, c = grid_cells(coords, 256, g)
    flat = (coords[:, 0] // 256) * g + coords[:, 1] // 256
    np.testing.assert_allclose(sincos_2d(r, c, dim).numpy(), table[flat.numpy()], rtol=1e-6,
                               atol=1e-7)
    with pytest.raises(ValueError, match="position table covers 7 x 7"):
        grid_cells(torch.tensor([[256 * 7, 0]]), 256, g)


# ------------------------------------------------------------------ the whole encoder
def test_dims_determinism_and_long_sequences():
    kw = {"embed_dim": 32, "heads": 4, "depth": 1}
    enc = sf.build_slide_encoder("gigapath_slide", pretrained=False, device="cpu", **kw)
    rng = np.random.default_rng(0)
    n = 1100  # + class token > the first segment (1024): two segments, the second padded
    feats = rng.normal(size=(n, 1536)).astype(np.float32)
    coords = rng.integers(0, 400, size=(n, 2)) * 256
    a = enc(feats, coords, 256)
    assert a.shape == (32,) and np.isfinite(a).all()
    t = enc(torch.from_numpy(feats), torch.from_numpy(coords), 256)  # torch in, torch out
    np.testing.assert_array_equal(t.numpy(), a)  # and deterministic
    feats, coords = feats[:40], coords[:40]
    a = enc(feats, coords, 256)
    assert not np.allclose(enc(feats, coords + 256, 256), a, atol=1e-5)  # positions matter
    # the tile-size unit: 256 level-0 px by default; tile_size=None divides by the tile extent
    trident = sf.build_slide_encoder("gigapath_slide", pretrained=False, device="cpu",
                                     tile_size=None, **kw)
    np.testing.assert_allclose(trident(feats, coords * 2, 512), a, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="coords"):
        enc(feats)


def test_pooling_and_layer_variants():
    kw = {"embed_dim": 32, "heads": 4, "depth": 3}
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(20, 1536)).astype(np.float32)
    coords = rng.integers(0, 30, size=(20, 2)) * 256
    outs = {}
    for name, extra in {"cls": {}, "pool": {"global_pool": True},
                        "l2": {"layer": 2}, "l0": {"layer": 0, "global_pool": True}}.items():
        enc = sf.build_slide_encoder("gigapath_slide", pretrained=False, device="cpu",
                                     **kw, **extra)
        outs[name] = enc(feats, coords, 256)
        model = enc.model
    # layer 0 pooled = norm(mean of the embedded tiles + their positions)
    with torch.no_grad():
        r, c = grid_cells(torch.from_numpy(coords), 256, 1000)
        x = model.patch_embed(torch.from_numpy(feats)) + sincos_2d(r, c, 32)
        np.testing.assert_allclose(outs["l0"], model.norm(x.mean(0)).numpy(), rtol=1e-5,
                                   atol=1e-6)
    assert len({tuple(np.round(v, 5)) for v in outs.values()}) == 4
    with pytest.raises(ValueError, match="layer must be in 0..3"):
        sf.build_slide_encoder("gigapath_slide", pretrained=False, device="cpu", layer=4, **kw)




def gigapath_official(depth):
    # prov-gigapath LongNetViT(embed 768) + torchscale Encoder(subln, normalize_output):
    # patch_embed.proj, cls_token, encoder.layers.<i>.{self_attn.{q,k,v,out}_proj,
    # self_attn.inner_attn_ln, self_attn_layer_norm, ffn.{fc1,fc2,ffn_layernorm},
    # final_layer_norm}, encoder.layer_norm, norm (pos_embed is a non-persistent buffer)
    d = {"cls_token": (1, 1, 768), **_lin("patch_embed.proj", 768, 1536), **_ln("norm", 768),
         **_ln("encoder.layer_norm", 768)}
    for i in range(depth):
        p = f"encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            d.update(_lin(f"{p}.self_attn.{proj}", 768, 768))
        d.update({**_ln(f"{p}.self_attn.inner_attn_ln", 768), **_ln(f"{p}.self_attn_layer_norm",
                                                                     768),
                  **_lin(f"{p}.ffn.fc1", 3072, 768), **_lin(f"{p}.ffn.fc2", 768, 3072),
                  **_ln(f"{p}.ffn.ffn_layernorm", 3072), **_ln(f"{p}.final_layer_norm", 768)})
    return d


def test_official_checkpoint_layout_loads_strictly(tmp_path):
    shapes = gigapath_official(2)
    g = torch.Generator().manual_seed(2)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    path = tmp_path / "slide_encoder.pth"
    # create_model reads checkpoint["model"]; a stored sin-cos table is rebuilt, not loaded
    torch.save({"model": {**sd, "pos_embed": torch.zeros(1, 5, 768)}}, path)
    enc = sf.build_slide_encoder("gigapath_slide", weights=path, device="cpu", depth=2)
    assert enc.pretrained and enc.weights_sha256
    own = enc.state_dict()
    assert set(own) == set(shapes)
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k])
    out = enc(np.ones((5, 1536), np.float32), np.arange(10).reshape(5, 2) * 256, 256)
    assert out.shape == (768,)
    drop = dict(sd)
    drop.pop("encoder.layer_norm.weight")
    torch.save({"model": drop}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="missing"):
        sf.build_slide_encoder("gigapath_slide", weights=tmp_path / "missing.pth",
                               device="cpu", depth=2)
    torch.save({"model": {**sd, "decoder.weight": torch.zeros(2)}}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="decoder.weight"):
        sf.build_slide_encoder("gigapath_slide", weights=tmp_path / "extra.pth",
                               device="cpu", depth=2)


# ---------------------------------------------------------------- Slideflow's spelling
def test_slideflow_gigapath_spelling_pairs_tile_and_slide():
    from slideflow.model.slide_encoders import paired_slide_encoder

    assert paired_slide_encoder("gigapath").name == "gigapath_slide"
    # the tile model is built on the meta device (a 1.1B-parameter ViT-g; no memory)
    pair = sf.build_feature_extractor("gigapath", device="meta", pretrained=False,
                                      global_pool=True)
    assert type(pair).__name__ == "TwoStageExtractor"
    assert pair.tile.name == "gigapath" and pair.num_features == 1536
    assert "not built yet" in repr(pair)  # bags never need the slide weights
    slide = pair.slide  # built on first use: random like the tile model, pooled as asked
    assert slide.name == "gigapath_slide" and not slide.pretrained
    assert slide.model.global_pool and pair.tile.slide is slide
    tile_only = sf.build_feature_extractor("gigapath.tile", device="meta", pretrained=False)
    assert type(tile_only).__name__ == "FeatureExtractor"
    with pytest.raises(TypeError, match="paired slide encoder"):
        sf.build_feature_extractor("gigapath.tile", device="meta", pretrained=False,
                                   global_pool=True)
    with pytest.raises(TypeError, match="not both"):
        sf.build_feature_extractor("gigapath", weights="a.pth", tile_encoder_weights="b.pth")
