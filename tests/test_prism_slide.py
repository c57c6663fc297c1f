"""PRISM slide encoder (Perceiver over Virchow tile embeddings): dims, weight sharing, the
official checkpoint layout (names listed literally from paige-ai/Prism's perceiver.py, both
as a full state dict and as a deduplicated one), text parts ignored. Reduced width and depth
in most tests (same code path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from state_dict_shapes import layernorm as _ln
from state_dict_shapes import linear as _lin

import slideflow as sf
from slideflow.errors import WeightsError
from slideflow.model.slide_encoders import get_slide_spec

SMALL = {"latent_seq": 4, "latent_dim": 16, "mhsa_heads": 2, "perceiver_depth": 3,
         "transformer_depth": 2}


def test_spec_facts():
    spec = get_slide_spec("prism")
    assert (spec.dim, spec.tile_extractor, spec.tile_features) == (1280, "virchow", 2560)
    assert spec.build["latent_seq"] == 512 and spec.build["perceiver_depth"] == 8
    assert spec.build["transformer_depth"] == 6 and spec.build["mhsa_heads"] == 8
    assert spec.license == "CC-BY-NC-ND-4.0" and spec.gated
    assert spec.weights.repo_id == "paige-ai/Prism"
    assert spec.distribution == "slideflow-noncommercial" and spec.positional == "none"
    assert "not built" in spec.description  # the BioGPT decoder is out of scope


def test_dims_and_permutation_invariance():
    full = sf.build_slide_encoder("prism", pretrained=False, device="meta")
    n_params = sum(p.numel() for p in full.model.parameters())  # shared blocks counted once
    assert 90e6 < n_params < 110e6  # PRISM's Perceiver: ~99M (slide2vec's model table)
    # full width, 2 of 8 layers with a 1-block transformer: same code path, fast on 2 CPUs
    enc = sf.build_slide_encoder("prism", pretrained=False, device="cpu", perceiver_depth=2,
                                 transformer_depth=1)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(37, 2560)).astype(np.float32)
    out = enc(feats)
    assert out.shape == (1280,) and np.isfinite(out).all()
    np.testing.assert_allclose(enc(feats[::-1].copy()), out, rtol=1e-4, atol=1e-5)
    t = enc(torch.from_numpy(feats))  # torch in, torch out
    assert isinstance(t, torch.Tensor) and t.shape == (1280,)


def test_weight_sharing_and_cross_attention():
    enc = sf.build_slide_encoder("prism", pretrained=False, device="cpu", **SMALL)
    layers = enc.model.image_resampler.perceiver.layers
    assert layers[2]["xattn"] is layers[1]["xattn"] and layers[1]["xattn"] is not layers[0][
        "xattn"]
    assert layers[1]["tf"] is layers[0]["tf"] and layers[2]["tf"] is layers[0]["tf"]
    xattn = layers[0]["xattn"]["xattn"]
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 5, 16, generator=g), torch.randn(1, 7, 2560, generator=g)
    with torch.no_grad():
        got = xattn(x, xattn.keys_values(c))
        q = xattn.to_q(xattn.x_norm(x))
        k, v = xattn.to_kv(c).chunk(2, dim=-1)
        ref = xattn.to_out(torch.softmax(q @ k.transpose(1, 2) / 16 ** 0.5, -1) @ v)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)




def prism_official(latents=4, dim=16, context=2560, depth=3, tdepth=2, dedup=False):
    # paige-ai/Prism: image_resampler.{cls_norm,img_norm,perceiver.latents,
    # perceiver.layers.<i>.xattn.{xattn.{x_norm,to_q,to_kv,to_out},ff.{norm,net.0,net.2}},
    # perceiver.layers.<i>.tf.<j>.{mhsa.{norm,mha.in_proj_weight,mha.out_proj},ff}}; no biases
    # in the attention projections; layers > 1 share layer 1's xattn, all share layer 0's tf
    p = "image_resampler"
    d = {**_ln(f"{p}.cls_norm", dim), **_ln(f"{p}.img_norm", dim),
         f"{p}.perceiver.latents": (latents + 1, dim)}

    def ff(prefix):
        return {**_ln(f"{prefix}.norm", dim), **_lin(f"{prefix}.net.0", 2 * dim, dim),
                **_lin(f"{prefix}.net.2", dim, dim)}

    for i in range(depth):
        layer = f"{p}.perceiver.layers.{i}"
        if not dedup or i <= 1:
            x = f"{layer}.xattn.xattn"
            d.update({**_ln(f"{x}.x_norm", dim), **_lin(f"{x}.to_q", dim, dim, False),
                      **_lin(f"{x}.to_kv", 2 * dim, context, False),
                      **_lin(f"{x}.to_out", dim, dim, False), **ff(f"{layer}.xattn.ff")})
        if not dedup or i == 0:
            for j in range(tdepth):
                t = f"{layer}.tf.{j}"
                d.update({**_ln(f"{t}.mhsa.norm", dim), f"{t}.mhsa.mha.in_proj_weight":
                          (3 * dim, dim), f"{t}.mhsa.mha.out_proj.weight": (dim, dim),
                          **ff(f"{t}.ff")})
    return d


def _tensors(shapes, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


def test_official_layout_loads_full_and_deduplicated(tmp_path):
    dedup = _tensors(prism_official(dedup=True))
    full = dict(dedup)
    for name in prism_official():  # every shared name holds its owner's tensor
        if name not in full:
            owner = name.replace("layers.2.xattn", "layers.1.xattn")
            owner = owner.replace("layers.1.tf", "layers.0.tf").replace("layers.2.tf",
                                                                        "layers.0.tf")
            full[name] = full[owner]
    assert set(full) == set(prism_official())
    text = {"text_decoder.model.embed.weight": torch.zeros(3, 2), "temperature": torch.ones(()),
            "img_to_latents.to_latents.weight": torch.zeros(8, 16)}
    outs = []
    for name, sd in (("full", full), ("dedup", dedup)):
        path = tmp_path / f"{name}.pth"
        torch.save({**sd, **text}, path)
        enc = sf.build_slide_encoder("prism", weights=path, device="cpu", **SMALL)
        own = enc.state_dict()
        assert set(own) == set(prism_official())
        for k, v in own.items():
            torch.testing.assert_close(v, full[k])
        outs.append(enc(np.ones((3, 2560), np.float32)))
    np.testing.assert_array_equal(outs[0], outs[1])
    # a checkpoint that kept another name of a shared block works the same
    renamed = {k.replace("layers.1.xattn", "layers.2.xattn"): v for k, v in dedup.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    enc = sf.build_slide_encoder("prism", weights=tmp_path / "renamed.pth", device="cpu",
                                 **SMALL)
    np.testing.assert_array_equal(enc(np.ones((3, 2560), np.float32)), outs[0])
    # different tensors under two names of one shared block, or a missing block: errors
    bad = dict(full)
    bad["image_resampler.perceiver.layers.2.xattn.ff.norm.weight"] = torch.zeros(16)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="different tensors"):
        sf.build_slide_encoder("prism", weights=tmp_path / "bad.pth", device="cpu", **SMALL)
    missing = {k: v for k, v in dedup.items() if "layers.0.tf.1.ff" not in k}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="missing"):
        sf.build_slide_encoder("prism", weights=tmp_path / "missing.pth", device="cpu",
                               **SMALL)
