"""Stain normalisation: fits, presets, round trips, known values, backends, degenerate tiles."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import slideflow.norm as sfn
from slideflow.errors import NormalizerError
from slideflow.norm.reinhard import rgb_to_lab

METHODS = sfn.list_methods()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def torch1():
    """torch, on one intra-op thread for the test: on a CPU shared with other jobs, every op
    big enough to be split across threads can wait a scheduler tick (~16 ms) for its second
    thread, which turns these sub-second tests into tens of seconds."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cmu(slides):
    """Real H&E from CMU-1: a 512 px target and four 128 px source tiles (mostly tissue)."""
    openslide = pytest.importorskip("openslide")
    slide = openslide.OpenSlide(str(slides / "CMU-1-Small-Region.svs"))

    def read(x, y, size):
        return np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"))

    target = read(1100, 2300, 512)
    tiles = np.stack([read(1000, 1900, 128), read(1128, 1900, 128), read(900, 1400, 128),
                      read(1200, 2000, 128)])
    slide.close()
    return target, tiles


def degenerate_tiles(size: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    noisy_white = np.clip(rng.normal(242, 2, (size, size, 3)), 0, 255).astype(np.uint8)
    few_cells = np.full((size, size, 3), 245, np.uint8)
    few_cells[:2, :3] = (120, 60, 140)  # 6 stained pixels, under 1 %
    return {
        "white": np.full((size, size, 3), 255, np.uint8),
        "noisy_white": noisy_white,
        "black": np.zeros((size, size, 3), np.uint8),
        "near_black": rng.integers(0, 4, (size, size, 3)).astype(np.uint8),
        "flat_pink": np.full((size, size, 3), (200, 120, 170), np.uint8),
        "few_cells": few_cells,
    }


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def angle_deg(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(unit(a), unit(b)), -1, 1))))


H_OD, E_OD = unit([0.5626, 0.7201, 0.4062]), unit([0.2159, 0.8012, 0.5581])  # Macenko's ref


def synthetic_he(size: int = 128, seed: int = 0) -> np.ndarray:
    """Pixels mixed from known H and E vectors, OD = c_h * H + c_e * E: a fifth pure H, a fifth
    pure E, two fifths mixed, a fifth glass (255, so brightness standardisation is a no-op)."""
    rng = np.random.default_rng(seed)
    n = size * size
    c = rng.uniform(0.05, 1.5, (n, 2))
    kind = rng.integers(0, 5, n)
    c[kind == 0, 1] = 0.0  # hematoxylin only
    c[kind == 1, 0] = 0.0  # eosin only
    od = c @ np.stack([H_OD, E_OD])
    rgb = np.clip(np.rint(255.0 * np.exp(-od) - 1.0), 0, 255)  # inverse of -log((I + 1) / 255)
    rgb[kind == 4] = 255
    return rgb.astype(np.uint8).reshape(size, size, 3)


# --- API, presets, configs ------------------------------------------------------------------


def test_import_does_not_import_torch():
    code = "import sys, slideflow.norm; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_presets_are_slideflows():
    mac = sfn.autoselect("macenko")
    assert mac.method == "macenko"
    assert mac.get_fit() == {  # Slideflow's default (v3)
        "stain_matrix_target": [[0.5062568, 0.2218694], [0.75322306, 0.8652155],
                                [0.40691733, 0.42241502]],
        "target_concentrations": [1.7656903, 1.2797493]}
    assert mac.fit_preset("v2").get_fit()["stain_matrix_target"][0] == [0.5626, 0.2159]
    rein = sfn.autoselect("reinhard", preset="v1").get_fit()
    assert rein["target_means"] == [72.272896, 22.99831, -13.860236]
    assert sfn.autoselect("reinhard_fast").get_fit()["target_stds"] == [14.675022, 7.5744166,
                                                                        5.226378]
    vah = sfn.autoselect("vahadane").get_fit()  # default v2, no concentrations
    assert vah == {"stain_matrix_target": [[0.4435433, 0.7502863, 0.4902447],
                                           [0.27688965, 0.8088818, 0.5186929]]}
    with pytest.raises(NormalizerError, match="v1, v2"):
        sfn.autoselect("vahadane", preset="v3")
    with pytest.raises(NormalizerError, match="unknown stain normalisation method"):
        sfn.autoselect("cyclegan")
    with pytest.raises(NormalizerError, match="backend"):
        sfn.autoselect("macenko", backend="tensorflow")


@pytest.mark.parametrize("method", METHODS)
def test_config_round_trip_is_bit_exact(method, cmu):
    target, tiles = cmu
    norm = sfn.autoselect(method).fit(target)
    cfg = json.loads(json.dumps(norm.to_config()))
    assert cfg["method"] == method
    again = sfn.from_config(cfg)
    assert again.get_fit() == norm.get_fit()
    assert np.array_equal(again.transform(tiles), norm.transform(tiles))
    assert sfn.from_config(None) is None and sfn.from_config({}) is None


def test_non_default_parameters_travel_with_the_config(cmu):
    _, tiles = cmu
    norm = sfn.autoselect("reinhard_fast_mask", threshold=0.85)
    cfg = json.loads(json.dumps(norm.to_config()))
    assert cfg["params"] == {"threshold": 0.85}
    assert "params" not in sfn.autoselect("reinhard_fast_mask").to_config()
    assert np.array_equal(sfn.from_config(cfg).transform(tiles), norm.transform(tiles))


def test_from_config_accepts_slideflow_fit_arrays():
    fit = {"stain_matrix_target": np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
                                           dtype=np.float32),
           "target_concentrations": np.array([1.9705, 1.0308], dtype=np.float32)}
    norm = sfn.from_config({"method": "macenko", "fit": fit})
    assert np.allclose(norm.get_fit()["target_concentrations"], [1.9705, 1.0308], atol=1e-6)
    assert sfn.from_config({"method": "reinhard"}).get_fit() == sfn.autoselect("reinhard").get_fit()


def test_set_fit_is_validated():
    norm = sfn.autoselect("reinhard")
    with pytest.raises(NormalizerError, match="shape"):
        norm.set_fit(target_means=[1, 2], target_stds=[1, 2, 3])
    with pytest.raises(NormalizerError, match="NaN"):
        norm.set_fit(target_means=[1, 2, float("nan")], target_stds=[1, 2, 3])
    with pytest.raises(NormalizerError, match="missing"):
        norm.set_fit(target_means=[1, 2, 3])
    with pytest.raises(NormalizerError, match="> 0"):
        norm.set_fit(target_means=[1, 2, 3], target_stds=[1, 0, 3])
    with pytest.raises(NormalizerError, match="uint8"):
        norm.transform(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(NormalizerError, match="HxWx3"):
        norm.transform(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("method", METHODS)
def test_fit_refuses_an_unusable_target(method):
    norm = sfn.autoselect(method)
    before = norm.get_fit()
    with pytest.raises(NormalizerError, match="cannot fit"):
        norm.fit(np.full((64, 64, 3), 255, np.uint8))
    assert norm.get_fit() == before


# --- known values -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["reinhard", "reinhard_fast"])
def test_reinhard_output_has_the_target_lab_statistics(method, cmu):
    target, tiles = cmu
    # A target inside the sRGB gamut after transfer (CMU-1 itself has an L* std of ~22).
    target = sfn.autoselect("reinhard_fast", preset="v3").transform(target)
    lab_t = rgb_to_lab(target).reshape(-1, 3).astype(np.float64)
    norm = sfn.autoselect(method).fit(target)
    fit = norm.get_fit()
    if method == "reinhard_fast":  # the fit is the target's own LAB statistics
        assert np.allclose(fit["target_means"], lab_t.mean(0), atol=1e-3)
        assert np.allclose(fit["target_stds"], lab_t.std(0), atol=1e-3)
    exact = 0
    for out in norm.transform(tiles):
        lab = rgb_to_lab(out).reshape(-1, 3).astype(np.float64)
        clipped = np.any((out == 0) | (out == 255))
        tol = 1.5 if clipped else 0.05  # colours pushed out of gamut are clipped to it
        exact += not clipped
        assert np.allclose(lab.mean(0), fit["target_means"], atol=tol)
        assert np.allclose(lab.std(0), fit["target_stds"], atol=tol)
    assert method == "reinhard" or exact >= 2


@pytest.mark.parametrize("method", ["reinhard_fast", "reinhard_fast_mask"])
def test_reinhard_on_its_own_target_is_identity(method, cmu):
    target, _ = cmu
    out = sfn.autoselect(method).fit(target).transform(target)
    assert np.abs(out.astype(int) - target).max() <= 1
    assert np.mean(out != target) < 1e-3


def test_reinhard_mask_leaves_background_alone(cmu):
    _, tiles = cmu
    tile = tiles[0].copy()
    tile[:, :32] = 250  # a white band: background
    out = sfn.autoselect("reinhard_fast_mask").transform(tile)
    assert np.array_equal(out[:, :32], tile[:, :32])
    assert not np.array_equal(out[:, 32:], tile[:, 32:])


@pytest.mark.parametrize("method", ["macenko_fast", "macenko", "vahadane"])
def test_stain_vectors_of_a_synthetic_image_are_recovered(method):
    norm = sfn.autoselect(method).fit(synthetic_he())
    m = np.asarray(norm.get_fit()["stain_matrix_target"])
    h, e = (m[:, 0], m[:, 1]) if method.startswith("macenko") else (m[0], m[1])
    assert angle_deg(h, H_OD) < 3.0
    assert angle_deg(e, E_OD) < 3.0


def test_macenko_fast_on_its_own_target_keeps_the_stains():
    img = synthetic_he(seed=3)
    out = sfn.autoselect("macenko_fast").fit(img).transform(img)
    # every pixel lies in the H/E plane, so rebuilding it with its own fit changes ~nothing
    assert np.abs(out.astype(int) - img).max() <= 2


def test_macenko_agrees_with_torchstain(cmu, monkeypatch):
    torchstain = pytest.importorskip("torchstain")
    target, tiles = cmu
    ref = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref.fit(target, Io=255, alpha=1, beta=0.15)
    # Same algorithm as macenko_fast (Io 255, no standardisation) except that we keep black
    # pixels out of the stain estimate; CMU-1's target has 20 of them, so: close, not equal.
    fit = sfn.autoselect("macenko_fast").fit(target).get_fit()
    assert np.allclose(fit["stain_matrix_target"], ref.HERef, atol=5e-3)
    assert np.allclose(fit["target_concentrations"], ref.maxCRef, rtol=5e-3)
    monkeypatch.setattr("slideflow.norm.ops.BLACK_LEVEL", 0)  # now the very same pixels
    norm = sfn.autoselect("macenko_fast").fit(target)
    fit = norm.get_fit()
    assert np.allclose(fit["stain_matrix_target"], ref.HERef, atol=1e-5)
    assert np.allclose(fit["target_concentrations"], ref.maxCRef, rtol=1e-5)
    for tile in tiles:
        expected = ref.normalize(tile, Io=255, alpha=1, beta=0.15, stains=False)[0]
        diff = norm.transform(tile).astype(int) - expected  # we round, torchstain truncates
        assert diff.min() >= 0 and diff.max() <= 1


def test_reinhard_fit_agrees_with_torchstain(cmu):
    torchstain = pytest.importorskip("torchstain")
    target, _ = cmu
    ref = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
    ref.fit(target)
    fit = sfn.autoselect("reinhard_fast").fit(target).get_fit()
    assert np.allclose(fit["target_means"], ref.target_means, atol=0.05)
    assert np.allclose(fit["target_stds"], ref.target_stds, atol=0.05)


# --- backends, batching, layouts ----------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_numpy_and_torch_agree(method, cmu, torch1):
    torch = torch1
    target, tiles = cmu
    fit = sfn.autoselect(method).fit(target).get_fit()
    cpu = sfn.autoselect(method)
    cpu.set_fit(**fit)
    expected = cpu.transform(tiles)
    tnorm = sfn.autoselect(method, backend="torch")
    tnorm.set_fit(**fit)
    got = tnorm.transform(tiles)  # numpy in, torch arithmetic
    assert got.dtype == np.uint8 and got.shape == tiles.shape
    assert np.abs(got.astype(int) - expected).max() <= 1
    nchw = torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()
    out = cpu.transform_torch(nchw)  # torch path whatever the backend
    assert out.dtype == torch.uint8 and out.shape == nchw.shape
    assert np.abs(out.permute(0, 2, 3, 1).numpy().astype(int) - expected).max() <= 1
    assert cpu.skipped == 0 and tnorm.skipped == 0


def test_torch_layouts(torch1):
    torch = torch1
    norm = sfn.autoselect("reinhard_fast")
    img = synthetic_he(32)
    ref = norm.transform(img)
    nhwc = torch.from_numpy(img)[None]
    nchw = nhwc.permute(0, 3, 1, 2)
    assert torch.equal(norm.transform_torch(nhwc)[0], torch.from_numpy(ref))
    assert torch.equal(norm.transform_torch(nchw)[0].permute(1, 2, 0), torch.from_numpy(ref))
    cl = nchw.contiguous(memory_format=torch.channels_last)
    assert torch.equal(norm.transform_torch(cl), norm.transform_torch(nchw))
    assert torch.equal(norm.transform_torch(nchw[0]).permute(1, 2, 0), torch.from_numpy(ref))
    assert torch.equal(norm.transform(nhwc[0]), torch.from_numpy(ref))  # tensor in, tensor out
    with pytest.raises(NormalizerError, match="channels_last"):
        norm.transform_torch(torch.zeros((2, 3, 5, 3), dtype=torch.uint8))
    out = norm.transform_torch(torch.zeros((2, 3, 5, 3), dtype=torch.uint8), channels_last=True)
    assert out.shape == (2, 3, 5, 3)
    with pytest.raises(NormalizerError, match="uint8"):
        norm.transform_torch(nchw.float())


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_by_one(method, cmu):
    _, tiles = cmu
    tiles = np.concatenate([tiles, tiles[:2, ::-1]])  # 6 images: more than one numpy step
    norm = sfn.autoselect(method)
    batch = norm.transform(tiles)
    for tile, out in zip(tiles, batch):
        assert np.array_equal(norm.transform(tile), out)
    assert norm.transform(tiles[:0]).shape == (0, *tiles.shape[1:])


# --- degenerate tiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("method", METHODS)
def test_degenerate_tiles_pass_through_unchanged(method, backend, cmu, request):
    if backend == "torch":
        request.getfixturevalue("torch1")
    _, tiles = cmu
    bad = degenerate_tiles(tiles.shape[1])
    norm = sfn.autoselect(method, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from NaN / division either
        for name, tile in bad.items():
            out = norm.transform(tile)
            assert np.array_equal(out, tile), name
        assert norm.skipped == len(bad) and norm.processed == len(bad)
        mixed = np.stack([tiles[0], bad["white"], tiles[1], bad["black"]])
        out = norm.transform(mixed)
    assert np.array_equal(out[1], mixed[1]) and np.array_equal(out[3], mixed[3])
    assert not np.array_equal(out[0], mixed[0]) and not np.array_equal(out[2], mixed[2])
    assert norm.skipped == len(bad) + 2
    norm.reset_counters()
    assert norm.skipped == 0 and norm.processed == 0


@pytest.mark.parametrize("method", METHODS)
def test_hostile_input_never_raises(method):
    rng = np.random.default_rng(7)
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, 32:] = synthetic_he(64)[:, 32:]
    batch = np.stack([
        rng.integers(0, 256, (64, 64, 3)).astype(np.uint8),  # noise
        np.full((64, 64, 3), (255, 0, 0), np.uint8),  # saturated red
        np.clip(rng.normal((250, 10, 10), 3, (64, 64, 3)), 0, 255).astype(np.uint8),
        half,  # half black padding
        synthetic_he(64) // 8,  # very dark tissue
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sfn.autoselect(method).transform(batch)
    assert out.dtype == np.uint8 and out.shape == batch.shape


# --- determinism -------------------------------------------------------------------------------


def test_vahadane_is_deterministic_across_runs():
    code = (
        "import hashlib, sys; sys.path.insert(0, 'tests'); import numpy as np;"
        "import slideflow.norm as n; from test_norm import synthetic_he;"
        "v = n.autoselect('vahadane').fit(synthetic_he(96, seed=5));"
        "out = v.transform(np.stack([synthetic_he(64, seed=s) for s in range(3)]));"
        "print(hashlib.sha256(out.tobytes() + repr(v.get_fit()).encode()).hexdigest())"
    )
    runs = {subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True, cwd=ROOT).stdout.strip() for _ in range(2)}
    assert len(runs) == 1
    norm = sfn.autoselect("vahadane")
    img = synthetic_he(64, seed=9)
    assert np.array_equal(norm.transform(img), sfn.autoselect("vahadane").transform(img))


def test_percentile_matches_numpy(torch1):
    torch = torch1
    from slideflow.norm.ops import NumpyOps, TorchOps, percentile

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 999)).astype(np.float32)
    mask = rng.random((4, 999)) < 0.3
    for q in (0.0, 1.0, 37.5, 50.0, 99.0, 100.0):
        want = np.array([np.percentile(r[m].astype(np.float64), q) for r, m in zip(x, mask)])
        (got,) = percentile(NumpyOps(), x, (q,), mask=mask)
        (got_t,) = percentile(TorchOps("cpu"), torch.from_numpy(x), (q,),
                              mask=torch.from_numpy(mask))
        assert np.allclose(got, want, atol=1e-6) and np.allclose(got_t.numpy(), want, atol=1e-6)
        (whole,) = percentile(NumpyOps(), x, (q,))
        assert np.allclose(whole, np.percentile(x.astype(np.float64), q, axis=-1), atol=1e-6)


def test_srgb_encoding_is_exact_rounding(torch1):
    torch = torch1
    from slideflow.norm import ops

    bounds = ops.SRGB_BOUNDS
    assert np.min(np.diff(bounds.astype(np.float64))) > 1.0 / ops._GRID  # one bound per cell
    v = np.concatenate([np.random.default_rng(0).random(100_000), bounds,
                        np.nextafter(bounds, 0), np.nextafter(bounds, 2),
                        [0.0, 1.0, -1.0, 2.0]]).astype(np.float32)
    want = np.searchsorted(bounds, np.clip(v, 0, 1), side="right")
    assert np.array_equal(ops.NumpyOps().encode_srgb(v), want)
    assert np.array_equal(ops.TorchOps("cpu").encode_srgb(torch.from_numpy(v)).numpy(), want)
    # and it is round(255 * sRGB(v)) away from the half-way points
    enc = np.where(v > 0.0031308, 1.055 * np.clip(v, 0, None) ** (1 / 2.4) - 0.055, 12.92 * v)
    far = np.abs(255 * enc - np.floor(255 * enc) - 0.5) > 1e-3
    assert np.array_equal(want[far], np.clip(np.rint(255 * enc), 0, 255)[far])
    nan = np.array([np.nan, np.inf, -np.inf], np.float32)
    assert ops.NumpyOps().encode_srgb(nan).tolist() == [0, 255, 0]
