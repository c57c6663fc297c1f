"""The one engine: model-layer batch runner, dispatch through hooks, sinks, nvJPEG source on CPU."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow import hooks
from slideflow.extract import TFRecordSink
from slideflow.model.extractors.runner import BatchRunner, as_nchw_uint8
from slideflow.pipeline import RowCollector, run, tfrecord_features, tfrecord_source

from conftest import CMU

PKG = Path(sf.__file__).parent


class MeanModel:
    """Features = per-channel means, so every row can be checked against its pixels."""

    name = "mean"
    num_features = 3
    device = torch.device("cpu")
    batch_size = 5

    def preprocess(self, x):
        return x.float()

    def forward_preprocessed(self, x):
        return x.mean(dim=(2, 3))


def _tiles(n=13, px=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def test_as_nchw_uint8_is_a_view_and_checks_input():
    tiles = _tiles(2)
    x = as_nchw_uint8(tiles)
    assert x.shape == (2, 3, 16, 16) and x.data_ptr() == tiles.ctypes.data  # no pixel copied
    assert as_nchw_uint8(tiles[::-1]).shape == (2, 3, 16, 16)  # negative strides copied
    with pytest.raises(TypeError, match="uint8"):
        as_nchw_uint8(tiles.astype(np.float32))
    with pytest.raises(ValueError, match="channel"):
        as_nchw_uint8(np.zeros((2, 4, 4, 4), np.uint8))


def test_batch_runner_keeps_order_and_values():
    tiles = _tiles()
    expected = tiles.reshape(len(tiles), -1, 3).astype(np.float64).mean(axis=1)
    runner = BatchRunner(MeanModel())
    out = list(runner.run((tiles[a:a + 4], a) for a in range(0, len(tiles), 4)))
    assert [tag for _, tag in out] == [0, 4, 8, 12]
    np.testing.assert_allclose(np.concatenate([f for f, _ in out]), expected, rtol=1e-6)
    # tensors (NCHW or NHWC) and numpy give the same rows
    t = torch.from_numpy(tiles)
    for batch in (t, t.permute(0, 3, 1, 2)):
        feats = np.concatenate([f for f, _ in runner.run([(batch, None)])])
        np.testing.assert_allclose(feats, expected, rtol=1e-6)


def test_batch_runner_in_flight_depth_on_cpu():
    """The CUDA hand-out order (features of batch k returned while k+depth is submitted,
    the rest at drain) runs on the CPU with an explicit depth."""
    tiles = _tiles(20)
    expected = tiles.reshape(len(tiles), -1, 3).astype(np.float64).mean(axis=1)
    runner = BatchRunner(MeanModel(), depth=2)
    ready = [[tag for _, tag in runner.submit(tiles[a:a + 4], a)] for a in range(0, 20, 4)]
    assert ready == [[], [], [0], [4], [8]]
    rest = runner.drain()
    assert [tag for _, tag in rest] == [12, 16] and runner.drain() == []
    out = list(BatchRunner(MeanModel(), depth=2).run((tiles[a:a + 4], a)
                                                     for a in range(0, 20, 4)))
    np.testing.assert_allclose(np.concatenate([f for f, _ in out]), expected, rtol=1e-6)
    assert BatchRunner(MeanModel()).depth == 0


def test_batch_runner_rejects_wrong_feature_count():
    class Wrong(MeanModel):
        num_features = 4

    with pytest.raises(RuntimeError, match="expected 4"):
        BatchRunner(Wrong()).submit(_tiles(2))


def test_run_without_model_hands_tiles_to_sink_in_order():
    wsi = sf.WSI(CMU, 64, 128).qc("otsu")
    got, coords = [], []

    def sink(tiles, c):
        got.append(tiles.copy())
        coords.append(c.copy())

    class Invert:
        def transform(self, batch):
            return 255 - batch

    stats = run(wsi.tiles(batch_size=7), sink, normalizer=Invert())
    direct = np.concatenate([t for t, _ in wsi.tiles(batch_size=16)])
    np.testing.assert_array_equal(np.concatenate(got), 255 - direct)
    np.testing.assert_array_equal(np.concatenate(coords), wsi.coords)
    assert stats.tiles == len(wsi)


def test_model_layer_never_imports_the_engine_or_slides():
    banned = ("slideflow.engine", "slideflow.pipeline", "slideflow.features", "slideflow.extract",
              "slideflow.slide",
              "slideflow.dataset", "slideflow.project")
    for path in (PKG / "model").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module
                if node.level:  # relative: resolve against the file's package
                    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
                    mod = ".".join(parts[:-node.level] + [node.module])
                assert not mod.startswith(banned), f"{path}: imports {mod}"


def test_extractor_call_goes_through_the_hook(monkeypatch):
    ext = MeanModel()
    assert hooks.call_input_handlers(ext, 42) is NotImplemented
    seen = []
    monkeypatch.setattr(hooks, "_handlers", [lambda e, x, **k: seen.append(x) or "engine"])
    assert hooks.call_input_handlers(ext, "a.tfrecords") == "engine" and seen == ["a.tfrecords"]


def _tfrecord(tmp_path, fmt="jpg"):
    wsi = sf.WSI(CMU, 64, 128).qc("otsu")
    path = tmp_path / f"cmu.{fmt}.tfrecords"
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool, TFRecordSink(path, "cmu", 32, fmt, 95, pool=pool,
                                                     chunks=2) as sink:
        run(wsi.tiles(batch_size=8), sink)
    assert sink.n == len(wsi)
    return path, wsi


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_torchvision_decoder_source_matches_cpu_decoder(tmp_path, fmt):
    path, wsi = _tfrecord(tmp_path, fmt)
    cpu = list(tfrecord_source(path, 8))
    tv = list(tfrecord_source(path, 8, decoder="nvjpeg", device="cpu"))
    assert len(cpu) == len(tv)
    for (a, la), (b, lb) in zip(cpu, tv):
        assert isinstance(b, torch.Tensor) and b.dtype == torch.uint8 and b.shape == a.shape
        np.testing.assert_array_equal(la, lb)
        diff = np.abs(a.astype(int) - b.numpy().astype(int))
        assert diff.max() <= 2, f"{fmt}: decoders differ by {diff.max()}"
    np.testing.assert_array_equal(np.concatenate([lc for _, lc in cpu]),
                                  wsi.coords + 32)
    with pytest.raises(ValueError, match="decoder"):
        tfrecord_source(path, 8, decoder="bogus")


def test_tfrecord_features_per_decoder(tmp_path):
    path, wsi = _tfrecord(tmp_path)
    f_cpu, l_cpu = tfrecord_features(MeanModel(), path, decoder="cpu")
    f_tv, l_tv = tfrecord_features(MeanModel(), path, decoder="nvjpeg")
    np.testing.assert_array_equal(l_cpu, l_tv)
    np.testing.assert_allclose(f_cpu, f_tv, atol=0.5)
    assert f_cpu.shape == (len(wsi), 3)


def test_sink_failure_leaves_no_tfrecord(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "x.tfrecords"

    def source():
        yield _tiles(4), np.zeros((4, 2), np.int64)
        raise OSError("reader gone")

    with ThreadPoolExecutor(1) as pool, pytest.raises(OSError, match="reader gone"):
        with TFRecordSink(path, "x", 8, "jpg", 90, pool=pool, chunks=1) as sink:
            run(source(), sink)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_row_collector_and_engine_rows_match_embed():
    ext = MeanModel()
    tiles = _tiles(11)
    rows = RowCollector(3)
    run([(tiles, np.arange(22).reshape(11, 2))], rows, extractor=ext)
    feats, coords = rows.result()
    direct = np.concatenate([f for f, _ in BatchRunner(ext).run([(tiles, None)])])
    np.testing.assert_array_equal(feats, direct)
    np.testing.assert_array_equal(coords, np.arange(22).reshape(11, 2))
