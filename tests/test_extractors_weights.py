"""Weights: local files and folders, the Hugging Face cache, strict checks, sha256."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.errors import WeightsError
from slideflow.model.extractors import registry
from slideflow.model.extractors import weights as weights_module
from slideflow.model.extractors.spec import ExtractorSpec, hf

torch.set_num_threads(1)

TILES = np.random.default_rng(7).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def source():
    """A random resnet18 extractor run at 64 px, and its state dict."""
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=3,
                                     resize=64)
    sd = {k: v.clone() for k, v in ext.model.state_dict().items()}
    return ext, sd, ext(TILES)


def test_random_init_is_honest_and_seeded(source):
    ext, _, feats = source
    assert not ext.pretrained and ext.weights_sha256 is None
    assert ext.weights_source.startswith("random init")
    assert ext.dump_config()["kwargs"]["pretrained"] is False
    again = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=3, resize=64)
    np.testing.assert_array_equal(again(TILES), feats)
    other = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=4, resize=64)
    assert not np.allclose(other(TILES), feats)
    with pytest.raises(ValueError):
        sf.build_feature_extractor("resnet18_imagenet", pretrained=False, weights="x.pth")


def test_local_pth_checkpoint_dict_with_prefix(source, tmp_path):
    ext, sd, feats = source
    ckpt = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "optimizer": {"lr": 0.1}}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    loaded = sf.build_feature_extractor("resnet18_imagenet", weights=path, resize=64)
    np.testing.assert_array_equal(loaded(TILES), feats)
    assert loaded.pretrained and loaded.weights_sha256 == _sha(path)
    assert loaded.dump_config()["kwargs"]["weights"] == str(path)


def test_local_safetensors_and_folder(source, tmp_path):
    from safetensors.torch import save_file

    _, sd, feats = source
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = sf.build_feature_extractor("resnet18_imagenet", weights=path, resize=64)
    np.testing.assert_array_equal(loaded(TILES), feats)
    assert loaded.weights_sha256 == _sha(path)
    from_folder = sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path, resize=64)
    np.testing.assert_array_equal(from_folder(TILES), feats)


def test_classifier_head_is_expected_but_other_extras_are_not(source, tmp_path):
    _, sd, feats = source
    with_head = dict(sd, **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(with_head, tmp_path / "with_head.pth")
    loaded = sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "with_head.pth",
                                        resize=64)
    np.testing.assert_array_equal(loaded(TILES), feats)
    torch.save(dict(sd, extra_tensor=torch.zeros(3)), tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="unexpected.*extra_tensor"):
        sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "extra.pth")
    missing = {k: v for k, v in sd.items() if k != "layer4.1.bn2.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="missing.*layer4.1.bn2.running_var"):
        sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "missing.pth")


def test_wrong_shape_names_the_first_bad_tensor(source, tmp_path):
    _, sd, _ = source
    bad = dict(sd)
    bad["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    bad["layer3.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as info:
        sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "bad.pth")
    msg = str(info.value)
    assert "'layer2.0.conv1.weight'" in msg and "(128, 64, 5, 5)" in msg
    assert "(128, 64, 3, 3)" in msg and "layer3" not in msg


def test_unreadable_and_unsafe_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "junk.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="not found"):
        sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "nope.pth")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(WeightsError, match="unsupported"):
        sf.build_feature_extractor("resnet18_imagenet", weights=tmp_path / "weights.txt")


@pytest.fixture
def hub_spec():
    spec = ExtractorSpec(name="test_hub_resnet18", family="torchvision", dim=512, input_px=64,
                         license="MIT", cnn=True, build={"arch": "resnet18"},
                         weights=hf("acme/tiny-encoder", "model.safetensors"), gated=True,
                         expected_unexpected=("fc.*",))
    sf.register_extractor(spec)
    yield spec
    registry.unregister_extractor(spec.name)


def _lay_out_hf_cache(cache, repo: str, filename: str, sd) -> str:
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / filename))
    return str(snap / filename)


def test_hugging_face_cache_offline(source, hub_spec, tmp_path, monkeypatch):
    _, sd, feats = source
    cache = tmp_path / "hub"
    file = _lay_out_hf_cache(cache, "acme/tiny-encoder", "model.safetensors", sd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ext = sf.build_feature_extractor("test_hub_resnet18")
    np.testing.assert_array_equal(ext(TILES), feats)
    assert ext.weights_source == "hf:acme/tiny-encoder/model.safetensors"
    assert ext.weights_sha256 == _sha(file)
    assert ext.dump_config()["kwargs"] == {"name": "test_hub_resnet18"}
    explicit = sf.build_feature_extractor("resnet18_imagenet", resize=64,
                                          weights="hf:acme/tiny-encoder/model.safetensors")
    np.testing.assert_array_equal(explicit(TILES), feats)


def test_hugging_face_missing_says_what_to_do(hub_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsError) as info:
        sf.build_feature_extractor("test_hub_resnet18")
    msg = str(info.value)
    assert "huggingface.co/acme/tiny-encoder" in msg and "huggingface-cli login" in msg
    assert "weights=" in msg and "HF_HUB_OFFLINE" in msg


def test_gated_repo_error_says_what_to_do(hub_spec, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    def gated(*args, **kwargs):
        err = errors.GatedRepoError.__new__(errors.GatedRepoError)
        Exception.__init__(err, "401 gated")
        raise err

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    monkeypatch.setattr(weights_module, "hub_unreachable", lambda *a, **k: None)  # "online"
    with pytest.raises(WeightsError) as info:
        sf.build_feature_extractor("test_hub_resnet18")
    msg = str(info.value)
    assert "gated" in msg and "accept the licence" in msg and "HF_TOKEN" in msg


def test_unreachable_hub_fails_fast(hub_spec, tmp_path, monkeypatch):
    """No network and no HF_HUB_OFFLINE: one short probe, then an error naming the fixes
    (huggingface_hub alone retries for ~25 s per candidate file)."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        sf.build_feature_extractor("test_hub_resnet18")
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    assert "http://127.0.0.1:9 is unreachable" in msg and "HF_HUB_OFFLINE=1" in msg
    assert str(tmp_path / "cache") in msg and "weights=" in msg


def test_cached_hub_weights_need_no_network(source, hub_spec, tmp_path, monkeypatch):
    _, sd, feats = source
    cache = tmp_path / "hub"
    _lay_out_hf_cache(cache, "acme/tiny-encoder", "model.safetensors", sd)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ext = sf.build_feature_extractor("test_hub_resnet18")
    np.testing.assert_array_equal(ext(TILES), feats)


def test_no_default_weights_is_explicit():
    with pytest.raises(WeightsError, match="pretrained=False"):
        sf.build_feature_extractor("simclr")


def test_meta_init_fast_path_loads_exactly(tmp_path):
    spec = ExtractorSpec(
        name="test_tiny_vit_meta", family="timm", dim=64, input_px=32, license="MIT",
        build={"timm_class": "VisionTransformer", "meta_init": True, "kwargs": {
            "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2,
            "reg_tokens": 2, "no_embed_class": True, "init_values": 1e-5,
            "mlp_layer": "swiglu_packed", "act_layer": "silu"}})
    sf.register_extractor(spec)
    try:
        ref = sf.build_feature_extractor(spec.name, pretrained=False, seed=1)
        torch.save(ref.model.state_dict(), tmp_path / "vit.pth")
        fast = sf.build_feature_extractor(spec.name, weights=tmp_path / "vit.pth")
        tiles = TILES[:, :32, :32]
        np.testing.assert_array_equal(fast(tiles), ref(tiles))
        assert not any(t.is_meta for t in fast.model.state_dict().values())
    finally:
        registry.unregister_extractor(spec.name)


@pytest.mark.parametrize("layout", ["named", "sequential"])
def test_simclr_checkpoint_layouts(layout, tmp_path):
    src = sf.build_feature_extractor("simclr", arch="resnet18", pretrained=False, seed=8)
    assert src.num_features == 512 and src.transform.mean == (0.0, 0.0, 0.0)
    sd = src.state_dict()
    children = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    if layout == "sequential":  # nn.Sequential(*list(resnet.children())[:-1])
        sd = {f"{children.index(k.split('.')[0])}.{k.split('.', 1)[1]}": v for k, v in sd.items()}
    ckpt = {"state_dict": {f"module.encoder.{k}": v for k, v in sd.items()}}
    ckpt["state_dict"]["module.projector.0.weight"] = torch.zeros(128, 512)
    torch.save(ckpt, tmp_path / "simclr.ckpt")
    ext = sf.build_feature_extractor("simclr", arch="resnet18", weights=tmp_path / "simclr.ckpt")
    np.testing.assert_array_equal(ext(TILES), src(TILES))
    assert ext.dump_config()["kwargs"]["arch"] == "resnet18"


def test_finite_check_uses_the_sum_but_decides_element_wise():
    """cast_checked's fast path (a NaN/inf makes the sum NaN/inf) never refuses finite
    weights whose sum overflows, and still names a single inf or NaN."""
    from slideflow.model.extractors.weights import cast_checked

    big = torch.full((4,), 3e38)  # finite, but the float32 sum overflows to inf
    assert cast_checked(big, torch.float32, "w") is big
    half = torch.full((8,), 60000.0, dtype=torch.float16)  # fp16 sum overflows too
    assert torch.equal(cast_checked(half, torch.float32, "h"), half.float())
    for bad in (float("inf"), float("-inf"), float("nan")):
        t = torch.zeros(1000)
        t[517] = bad
        with pytest.raises(WeightsError, match="'w'.* 1 non-finite"):
            cast_checked(t, torch.float32, "w")


@pytest.mark.parametrize("spec_repo, cached_as", [("acme/tiny-encoder", "Acme/Tiny-Encoder"),
                                                  ("Acme/Tiny-Encoder", "acme/tiny-encoder")])
def test_offline_cache_matches_repo_ids_case_insensitively(source, tmp_path, monkeypatch,
                                                           spec_repo, cached_as):
    """The hub treats MahmoodLab/UNI and MahmoodLab/uni as one repo; the cache keeps the
    spelling used to download. Offline lookup finds either spelling."""
    _, sd, feats = source
    cache = tmp_path / "hub"
    path = _lay_out_hf_cache(cache, cached_as, "model.safetensors", sd)
    spec = ExtractorSpec(name="test_hub_case", family="torchvision", dim=512, input_px=64,
                         license="MIT", cnn=True, build={"arch": "resnet18"},
                         weights=hf(spec_repo, "model.safetensors"),
                         expected_unexpected=("fc.*",))
    sf.register_extractor(spec)
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        assert weights_module.cached_spellings(spec_repo, str(cache)) == [spec_repo, cached_as]
        ext = sf.build_feature_extractor("test_hub_case")
        assert ext.weights_source == f"hf:{cached_as}/model.safetensors"
        assert ext.weights_sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
        np.testing.assert_array_equal(ext(TILES), feats)
    finally:
        registry.unregister_extractor(spec.name)
