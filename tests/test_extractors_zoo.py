"""The pathology model zoo: official checkpoint key layouts load strictly (no missing or
unexpected tensors), our rebuilt towers compute what the reference implementations compute
(transformers Dinov2 / CLIP built tiny with random weights), and the preprocessing numbers are
the ones the model cards and the authors' code give.

Large towers (ViT-L/g) are checked on the meta device (shapes and key sets, no memory); the
numerical equivalence tests use depth-reduced models of the same code paths.
"""

from __future__ import annotations

import pytest
import torch

import slideflow as sf
from slideflow.model.extractors import registry
from slideflow.model.extractors import weights as W
from slideflow.model.extractors.families import coca_family, dino_family
from slideflow.model.extractors.spec import ExtractorSpec

torch.set_num_threads(1)


def _meta_sd(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v.shape, device="meta") for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- preprocessing
CARDS = {  # name: (input_px, resize_px, center_crop, interpolation, mean, std, dim)
    "conch": (448, 448, 448, "bicubic", (0.48145466, 0.4578275, 0.40821073),
              (0.26862954, 0.26130258, 0.27577711), 512),
    "conch_v15": (448, 448, 448, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                  768),
    "chief_ctranspath": (224, None, None, "bilinear", (0.485, 0.456, 0.406),
                         (0.229, 0.224, 0.225), 768),
    "h_optimus_1": (224, None, None, "bilinear", (0.707223, 0.578729, 0.703617),
                    (0.211883, 0.230117, 0.177517), 1536),
    "h0_mini": (224, None, None, "bicubic", (0.707223, 0.578729, 0.703617),
                (0.211883, 0.230117, 0.177517), 1536),
    "hibou_b": (224, None, None, "bicubic", (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816),
                768),
    "hibou_l": (224, None, None, "bicubic", (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816),
                1024),
    "midnight": (224, 224, 224, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3072),
    "dinov2_vitl14": (224, 256, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                      1024),
    "gpfm": (224, None, None, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1024),
    "kaiko_vits16": (224, 224, 224, "bilinear", (0.5,) * 3, (0.5,) * 3, 384),
    "kaiko_vits8": (224, 224, 224, "bilinear", (0.5,) * 3, (0.5,) * 3, 384),
    "kaiko_vitb16": (224, 224, 224, "bilinear", (0.5,) * 3, (0.5,) * 3, 768),
    "kaiko_vitb8": (224, 224, 224, "bilinear", (0.5,) * 3, (0.5,) * 3, 768),
    "kaiko_vitl14": (224, 224, 224, "bilinear", (0.5,) * 3, (0.5,) * 3, 1024),
    "lunit_vits16": (224, None, None, "bilinear", (0.70322989, 0.53606487, 0.66096631),
                     (0.21716536, 0.26081574, 0.20723464), 384),
    "lunit_vits8": (224, None, None, "bilinear", (0.70322989, 0.53606487, 0.66096631),
                    (0.21716536, 0.26081574, 0.20723464), 384),
    "plip": (224, 224, 224, "bicubic", (0.48145466, 0.4578275, 0.40821073),
             (0.26862954, 0.26130258, 0.27577711), 512),
}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_preprocessing_numbers_equal_the_cards(name):
    spec = registry.get_spec(name)
    px, resize, crop, interp, mean, std, dim = CARDS[name]
    assert (spec.input_px, spec.resize_px, spec.center_crop, spec.interpolation) == (
        px, resize, crop, interp)
    assert spec.mean == pytest.approx(mean) and spec.std == pytest.approx(std)
    assert spec.dim == dim and spec.reference and spec.citation.startswith("@")
    licence = spec.license.lower()
    if spec.distribution == "slideflow":
        assert "apache" in licence or "mit" in licence, name
    elif spec.distribution == "slideflow-gpl":
        assert "gpl" in licence
    else:
        assert "nc" in licence or "non-commercial" in licence or "unverified" in licence \
            or "research" in licence, name


# ---------------------------------------------------------------------------- CONCH
def test_conch_official_layout_loads_strictly(tmp_path):
    built = coca_family.build_conch(registry.get_spec("conch"))
    spec = registry.get_spec("conch")
    sd = {f"visual.{k}": v for k, v in built.model.state_dict().items()}
    sd.update({"visual.attn_pool_caption.query": torch.zeros(256, 768),
               "visual.ln_caption.weight": torch.ones(768), "logit_scale": torch.zeros(()),
               "text.token_embedding.weight": torch.zeros(8, 768),
               "text_decoder.resblocks.0.ln_1.weight": torch.ones(768)})
    names = set(sd)
    for key in ("visual.trunk.pos_embed", "visual.attn_pool_contrast.attn.q_proj_weight",
                "visual.attn_pool_contrast.attn.k_proj_weight",
                "visual.attn_pool_contrast.ln_k.weight", "visual.proj_contrast",
                "visual.ln_contrast.bias", "visual.trunk.blocks.11.mlp.fc2.weight"):
        assert key in names, key
    assert sd["visual.trunk.pos_embed"].shape == (1, 1 + 28 * 28, 768)
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    ext = sf.build_feature_extractor("conch", weights=path, device="cpu")
    tiles = torch.randint(0, 256, (2, 448, 448, 3), dtype=torch.uint8).numpy()
    ref = sf.build_feature_extractor("conch", weights=path, device="cpu", proj_contrast=True)
    a, b = ext(tiles), ref(tiles)
    assert a.shape == (2, 512) == b.shape and ext.pretrained
    proj = sd["visual.proj_contrast"].numpy()
    assert abs(a @ proj - b).max() < 1e-3  # proj_contrast=True is the projected feature
    assert ref.dump_config()["kwargs"]["proj_contrast"] is True
    assert spec.gated


def test_conch_pooler_matches_multihead_attention_by_hand():
    torch.manual_seed(0)
    pool = coca_family.MHAPooler(16, 24, 4)
    x = torch.randn(3, 10, 24)
    out = pool(x)
    q = pool.ln_q(pool.query)                                  # 1, 16
    k = pool.ln_k(x)
    a = pool.attn
    qp = q @ a.q_proj_weight.T + a.in_proj_bias[:16]
    kp = k @ a.k_proj_weight.T + a.in_proj_bias[16:32]
    vp = k @ a.v_proj_weight.T + a.in_proj_bias[32:]
    heads = []
    for h in range(4):
        s = slice(4 * h, 4 * h + 4)
        w = (qp[:, s] @ kp[..., s].transpose(1, 2) / 2.0).softmax(-1)   # 3, 1, 10
        heads.append(w @ vp[..., s])
    ref = a.out_proj(torch.cat(heads, -1))
    assert torch.allclose(out, ref, atol=1e-5)


def test_conch_v15_pooler_is_scaled_dot_product_attention_by_hand():
    torch.manual_seed(4)
    pool = coca_family.LinearPooler(16, 24, 4)
    x = torch.randn(3, 10, 24)
    q = pool.to_q(pool.ln_q(pool.query))                       # 1, 16
    k, v = pool.to_kv(pool.ln_k(x)).chunk(2, dim=-1)           # 3, 10, 16
    heads = []
    for h in range(4):
        s = slice(4 * h, 4 * h + 4)
        w = (q[:, s] @ k[..., s].transpose(1, 2) * 4 ** -0.5).softmax(-1)
        heads.append(w @ v[..., s])
    ref = pool.to_out(torch.cat(heads, -1))
    assert torch.allclose(pool(x), ref, atol=1e-5)


def test_conch_v15_official_layout_and_position_grid():
    spec = registry.get_spec("conch_v15")
    with torch.device("meta"):
        built = coca_family.build_conch_v15(spec)
    names = set(built.model.state_dict())
    expected_top = {"trunk.cls_token", "trunk.pos_embed", "trunk.patch_embed.proj.weight",
                    "trunk.patch_embed.proj.bias", "trunk.norm.weight", "trunk.norm.bias",
                    "attn_pool_contrast.query", "attn_pool_contrast.ln_k.weight",
                    "attn_pool_contrast.ln_k.bias", "attn_pool_contrast.ln_q.weight",
                    "attn_pool_contrast.ln_q.bias", "attn_pool_contrast.to_q.weight",
                    "attn_pool_contrast.to_kv.weight", "attn_pool_contrast.to_out.weight",
                    "ln_contrast.weight", "ln_contrast.bias"}
    block = {f"trunk.blocks.{i}.{p}" for i in range(24) for p in (
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
        "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma")}
    assert names == expected_top | block  # the TRIDENT CONCHVisionTower state dict, exactly
    sd = _meta_sd(built.model)
    assert sd["trunk.pos_embed"].shape == (1, 197, 1024)
    sd["trunk.pos_embed"] = torch.randn(1, 785, 1024)  # a 448-px grid: resized at load
    conv = coca_family.convert_conch_v15(sd)
    assert conv["trunk.pos_embed"].shape == (1, 197, 1024)
    W.check_state_dict(built.model, conv)  # no missing, no unexpected, shapes match


def test_offset_position_interpolation_is_the_ibot_rule():
    trunk = coca_family._offset_pos_vit()(img_size=32, patch_size=8, embed_dim=16, depth=1,
                                          num_heads=2, num_classes=0, dynamic_img_size=True)
    x = torch.zeros(1, 7, 7, 16)
    out = trunk._pos_embed(x)
    grid = trunk.pos_embed[:, 1:].reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, scale_factor=(7.1 / 4, 7.1 / 4),
                                          mode="bicubic", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, 49, 16)
    assert out.shape == (1, 50, 16)
    assert torch.allclose(out[:, 1:], ref, atol=1e-6)
    assert torch.allclose(out[:, 0], trunk.cls_token[:, 0] + trunk.pos_embed[:, 0])


# ---------------------------------------------------------------------------- DINOv2 family
def _tiny_dino(regs: int, swiglu: bool, native: int, pos_mode: str = "hf", output="cls"):
    spec = ExtractorSpec(name="tiny", family="dino", dim=32, input_px=56, license="x",
                         build={"embed_dim": 32, "depth": 2, "heads": 2, "patch": 14,
                                "regs": regs, "layerscale": 1e-5,
                                "ffn": "swiglu" if swiglu else "mlp", "native_px": native,
                                "pos_mode": pos_mode})
    return dino_family.build(spec, output=output)


def _as_released(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 module names -> the names in the released checkpoint files (written by
    transformers 4: ``attention.attention.query``, ``attention.output.dense``,
    ``mlp.weights_in`` = [gate; up] (silu(first half) * second half), ``mlp.weights_out``)."""
    out: dict[str, torch.Tensor] = {}
    names = {"attention.q_proj": "attention.attention.query",
             "attention.k_proj": "attention.attention.key",
             "attention.v_proj": "attention.attention.value",
             "attention.o_proj": "attention.output.dense", "mlp.down_proj": "mlp.weights_out"}
    for k, v in sd.items():
        if ".mlp.up_proj." in k:
            continue
        if ".mlp.gate_proj." in k:
            up = sd[k.replace("gate_proj", "up_proj")]
            out[k.replace("gate_proj", "weights_in")] = torch.cat([v, up])
            continue
        for new, old in names.items():
            k = k.replace(f".{new}.", f".{old}.")
        out[k] = v
    return out


@pytest.mark.parametrize("regs,swiglu,hf_size", [(4, True, 56), (0, True, 98), (0, False, 56)])
def test_transformers_dinov2_layout_gives_the_same_features(regs, swiglu, hf_size):
    """Hibou (registers, SwiGLU) and Midnight (no registers, position grid resampled the
    transformers way) checkpoints: our timm rebuild equals the transformers model."""
    import transformers as tf

    torch.manual_seed(1)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
              image_size=hf_size, use_swiglu_ffn=swiglu, layerscale_value=1e-5,
              mlp_ratio=4, layer_norm_eps=1e-6)
    if regs:
        ref = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(
            num_register_tokens=regs, **kw))
    else:
        ref = tf.Dinov2Model(tf.Dinov2Config(**kw))
    ref.eval()
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)  # LayerScale / biases away from their init values
    built = _tiny_dino(regs, swiglu, native=56)
    conv = built.convert(_as_released(sd))
    W.load_strict(built.model, conv, expected_unexpected=("embeddings.mask_token",
                                                          "mask_token", "pooler.*"))
    built.model.eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = ref(pixel_values=x).pooler_output
        got = built.model(x)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    again = built.convert(dict(built.model.state_dict()))  # our own layout reloads unchanged
    assert all(torch.equal(again[k], v) for k, v in built.model.state_dict().items())


def test_meta_dinov2_layout_with_registers_folds_the_class_position():
    torch.manual_seed(2)
    built = _tiny_dino(regs=4, swiglu=True, native=56)
    net = built.model
    hidden = net.blocks[0].mlp.fc2.weight.shape[1]
    sd = {"cls_token": torch.randn(1, 1, 32), "pos_embed": torch.randn(1, 17, 32),
          "register_tokens": torch.randn(1, 4, 32), "mask_token": torch.zeros(1, 32)}
    for k, v in net.state_dict().items():
        if k.startswith(("blocks.", "norm.", "patch_embed.")):
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
            sd[k] = torch.randn_like(v)
    conv = built.convert(sd)
    W.load_strict(net, conv, expected_unexpected=("mask_token",))
    assert torch.equal(net.cls_token, sd["cls_token"] + sd["pos_embed"][:, :1])
    assert torch.equal(net.reg_token, sd["register_tokens"]) and hidden * 2 == \
        net.blocks[0].mlp.fc1.weight.shape[0]


def test_cls_mean_output_excludes_registers():
    built = _tiny_dino(regs=4, swiglu=True, native=56, output="cls_mean")
    built.model.eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        tokens = built.model.forward_features(x)
        out = built.features(x)
    assert out.shape == (1, 64)
    assert torch.allclose(out[:, 32:], tokens[:, 5:].mean(1)) and torch.allclose(
        out[:, :32], tokens[:, 0])


def test_dinov2_hub_position_rule():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = dino_family.resample_grid(pos, 16, "dinov2", with_cls=True)
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, scale_factor=(16.1 / 37,) * 2, mode="bicubic",
                                          align_corners=False)
    assert out.shape == (1, 257, 8)
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 256, 8))
    assert dino_family.resample_grid(out, 16, "dinov2", with_cls=True) is out


# ---------------------------------------------------------------------------- PLIP
def test_plip_full_clip_checkpoint_loads_and_matches_get_image_features():
    import transformers as tf

    from slideflow.model.extractors.families import clip_family

    torch.manual_seed(3)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=64, patch_size=32, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5)
    cfg = tf.CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2),
                        vision_config=vision, projection_dim=16)
    ref = tf.CLIPModel(cfg).eval()
    spec = registry.get_spec("plip").with_(build={**vision, "projection_dim": 16}, dim=16,
                                           input_px=64)
    built = clip_family.build(spec)
    W.load_strict(built.model, ref.state_dict(), expected_unexpected=spec.expected_unexpected)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref.get_image_features(pixel_values=x)
        want = getattr(want, "pooler_output", want)
        got = built.features.eval()(x)
    assert got.shape == (2, 16) and torch.allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------- options, weights
def test_virchow_class_token_option():
    ext = sf.build_feature_extractor("virchow", device="meta", pretrained=False, output="cls")
    assert ext.num_features == 1280
    assert ext.dump_config()["kwargs"]["output"] == "cls"
    with pytest.raises(ValueError, match="output must be one of"):
        sf.build_feature_extractor("virchow", device="meta", pretrained=False, output="avg")
    mid = sf.build_feature_extractor("midnight", device="meta", pretrained=False,
                                     output="cls")
    assert mid.num_features == 1536


def test_chief_has_no_hub_default_and_says_where_to_get_it():
    with pytest.raises(sf.errors.WeightsError, match="CHIEF_CTransPath.pth"):
        sf.build_feature_extractor("chief_ctranspath", device="cpu")


def test_kaiko_official_timm_layout_loads(tmp_path):
    ext = sf.build_feature_extractor("kaiko_vits16", pretrained=False, device="cpu")
    path = tmp_path / "vits16.pth"
    torch.save(ext.state_dict(), path)  # the hub file is a plain timm state dict
    names = set(torch.load(path))
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"} <= names
    again = sf.build_feature_extractor("kaiko_vits16", weights=path, device="cpu")
    tiles = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8).numpy()
    assert abs(again(tiles) - ext(tiles)).max() < 1e-5


def test_external_entries_agree_with_the_plugin_specs():
    """Core lists the licence-split names when their package is missing; the facts it shows
    must be the installed specs' own."""
    from slideflow.model.extractors.catalog import EXTERNAL

    specs = registry._discover()
    for entry in EXTERNAL:  # core keeps only the name, licence and Slideflow 3 class
        spec = specs[registry.normalize(entry.name)]
        assert (spec.license, spec.distribution, spec.sf3_class) == (
            entry.license, entry.distribution, entry.sf3_class), entry.name


# ---------------------------------------------------------------------------- MUSK
def _musk_small(**kw):
    from slideflow.model.extractors.families import musk_family

    return musk_family.MUSKVision(img=32, patch=16, dim=16, depth=2, heads=2, hidden=24, **kw)


def test_musk_official_layout_loads_ignoring_text_experts():
    spec = registry.get_spec("musk")
    from slideflow.model.extractors.families import musk_family

    with torch.device("meta"):
        full = musk_family.build(spec).model
    names = set(full.state_dict())
    assert "beit3.encoder.embed_positions.A.weight" in names
    assert full.state_dict()["beit3.encoder.embed_positions.A.weight"].shape == (579, 1024)
    for key in ("beit3.vision_embed.proj.weight", "beit3.vision_embed.cls_token",
                "beit3.encoder.layers.23.self_attn.q_proj.A.weight",
                "beit3.encoder.layers.0.self_attn.inner_attn_ln.A.bias",
                "beit3.encoder.layers.0.self_attn_layer_norm.A.weight",
                "beit3.encoder.layers.0.ffn.A.fc1.weight",
                "beit3.encoder.layers.0.ffn.A.ffn_layernorm.weight",
                "beit3.encoder.layers.0.final_layer_norm.A.weight",
                "beit3.encoder.layer_norm.A.weight", "vision_head.weight"):
        assert key in names, key
    sd = _meta_sd(full)
    for k in list(sd):  # the released file also holds the text experts and heads
        if ".A." in k:
            sd[k.replace(".A.", ".B.")] = sd[k]
    sd.update({"beit3.text_embed.weight": torch.empty(64010, 1024, device="meta"),
               "language_head.weight": torch.empty(1024, 1024, device="meta"),
               "logit_scale": torch.empty((), device="meta"),
               "beit3.vision_embed.mask_token": torch.empty(1, 1, 1024, device="meta")})
    W.check_state_dict(full, sd, expected_unexpected=spec.expected_unexpected)
    assert spec.dim == 2048 and spec.input_px == 384 and spec.gated  # ms_aug default
    assert (spec.mean, spec.std, spec.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bicubic")


def test_musk_layer_is_subln_prenorm_by_hand():
    torch.manual_seed(5)
    m = _musk_small().eval()
    x = torch.randn(2, 3, 32, 32)
    tok = m.beit3.vision_embed(x)
    tok = tok + m.beit3.encoder.embed_positions.A.weight[2:2 + tok.shape[1]]
    for layer in m.beit3.encoder.layers:
        a = layer.self_attn
        h = layer.self_attn_layer_norm.A(tok)
        q, k, v = (p.A(h).view(2, 5, 2, 8).transpose(1, 2) for p in (a.q_proj, a.k_proj,
                                                                      a.v_proj))
        w = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)
        o = (w @ v).transpose(1, 2).reshape(2, 5, 16)
        tok = tok + a.out_proj.A(a.inner_attn_ln.A(o))
        f = layer.ffn.A
        h = f.fc1(layer.final_layer_norm.A(tok))
        tok = tok + f.fc2(f.ffn_layernorm(torch.nn.functional.gelu(h)))
    ref = m.beit3.encoder.layer_norm.A(tok)[:, 0]
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-5)
        headed = _musk_small(with_head=True, out_norm=True).eval()
        headed.load_state_dict(m.state_dict())
        want = torch.nn.functional.normalize(m.vision_head(ref), dim=-1)
        assert torch.allclose(headed(x), want, atol=1e-5)
