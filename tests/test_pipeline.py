"""The streaming engine in isolation, with a transparent stand-in model (per-channel means)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import slideflow as sf
from slideflow.pipeline import RowCollector, _rebatch, run_features, wsi_features

from conftest import CMU


class MeanModel:
    """Features = per-channel mean of each tile, so rows can be checked against the pixels."""

    name = "mean"
    num_features = 3
    device = torch.device("cpu")

    def __init__(self, batch_size=8):
        self.batch_size = batch_size

    def preprocess(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return x.float()

    def forward_preprocessed(self, x):
        return x.mean(dim=(2, 3))


def test_rows_follow_coords_order():
    wsi = sf.WSI(CMU, 64, 64).qc("otsu")
    grid = wsi_features(MeanModel(batch_size=7), wsi)
    tiles = np.concatenate([t for t, _ in wsi.tiles(batch_size=16)])
    expected = tiles.reshape(len(tiles), -1, 3).astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(grid.rows, expected, rtol=1e-5)
    np.testing.assert_array_equal(grid.coords, wsi.coords)
    assert grid.shape == (*wsi.grid.shape, 3)
    r, c = wsi.grid_indices[5]
    np.testing.assert_allclose(grid[r, c].data, expected[5], rtol=1e-5)
    assert grid.mask[~wsi.grid].all() and not grid.mask[wsi.grid].any()


def test_zero_tissue_slide(tmp_path):
    roi = tmp_path / "r.csv"
    roi.write_text("ROI_name,X_base,Y_base\nr,5000,5000\nr,6000,5000\nr,6000,6000\n")
    wsi = sf.WSI(CMU, 128, 256, rois=roi)
    assert len(wsi) == 0
    grid = wsi_features(MeanModel(), wsi)
    assert grid.rows.shape == (0, 3) and grid.mask.all()


def test_rebatch_exact_sizes():
    src = [(np.zeros((n, 2, 2, 3), np.uint8), np.full((n, 2), i)) for i, n in
           enumerate([3, 5, 1, 8, 2])]
    out = list(_rebatch(iter(src), 4))
    assert [len(t) for t, _ in out] == [4, 4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([c for _, c in out])[:, 0],
                                  np.repeat(np.arange(5), [3, 5, 1, 8, 2]))


def test_rebatch_keeps_torch_tiles_as_tensors_on_their_device():
    import torch

    sizes = [3, 5, 1, 8, 2]
    src = [(torch.full((n, 2, 2, 3), i, dtype=torch.uint8), np.full((n, 2), i)) for i, n in
           enumerate(sizes)]
    out = list(_rebatch(iter(src), 4))
    assert [len(t) for t, _ in out] == [4, 4, 4, 4, 3]
    assert all(torch.is_tensor(t) and t.device.type == "cpu" and t.dtype == torch.uint8
               for t, _ in out)  # never np.concatenate (which would move GPU tiles to host)
    expect = np.repeat(np.arange(5), sizes)
    np.testing.assert_array_equal(torch.cat([t for t, _ in out])[:, 0, 0, 0].numpy(), expect)
    np.testing.assert_array_equal(np.concatenate([c for _, c in out])[:, 0], expect)
    # a numpy batch after tensors (e.g. a region-path slide) joins them on the tensors' device
    mixed = list(_rebatch(iter([(torch.zeros((3, 2, 2, 3), dtype=torch.uint8), np.zeros((3, 2))),
                                (np.ones((2, 2, 2, 3), np.uint8), np.ones((2, 2)))]), 4))
    assert [type(t).__name__ for t, _ in mixed] == ["Tensor", "Tensor"]
    assert mixed[0][0][:, 0, 0, 0].tolist() == [0, 0, 0, 1]


def _threads():
    return {t.name for t in threading.enumerate()}


def test_errors_stop_cleanly_without_leaked_threads():
    before = threading.active_count()

    def failing_source():
        yield np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 2), np.int64)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        run_features(MeanModel(4), failing_source(), RowCollector(3))
    wsi = sf.WSI(CMU, 64, 64)

    def bad_sink(f, c):
        raise RuntimeError("sink full")

    with pytest.raises(RuntimeError, match="sink full"):
        run_features(MeanModel(4), wsi.tiles(batch_size=4, num_threads=2), bad_sink)
    assert threading.active_count() == before, _threads()


def test_normalizer_runs_in_prefetch_stage():
    class Invert:
        def transform(self, batch):
            return 255 - batch

    wsi = sf.WSI(CMU, 128, 256)
    plain = wsi_features(MeanModel(), wsi).rows
    inv = wsi_features(MeanModel(), wsi, normalizer=Invert()).rows
    np.testing.assert_allclose(inv, 255 - plain, rtol=1e-5)


def test_run_many_one_read_one_runner_per_extractor(monkeypatch):
    """`-e a,b`: the source is read once; each extractor gets one BatchRunner for the whole
    run (depth 2 here, the CUDA hand-out order) and exactly the batches it gets alone."""
    from slideflow.model.extractors import runner as runner_mod
    from slideflow.pipeline import run_many

    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 255, (n, 8, 8, 3), np.uint8), np.full((n, 2), i, np.int64))
               for i, n in enumerate([5, 16, 3, 9, 1])]
    reads = []

    def source():
        for b in batches:
            reads.append(1)
            yield b

    made, sizes = [], {}
    real_init, real_submit = runner_mod.BatchRunner.__init__, runner_mod.BatchRunner.submit

    def init(self, extractor, depth=None):
        made.append(extractor)
        real_init(self, extractor, depth=2)

    def submit(self, tiles, tag=None):
        sizes.setdefault(id(self.extractor), []).append(len(tiles))
        return real_submit(self, tiles, tag)

    monkeypatch.setattr(runner_mod.BatchRunner, "__init__", init)
    monkeypatch.setattr(runner_mod.BatchRunner, "submit", submit)
    a, b = MeanModel(batch_size=4), MeanModel(batch_size=7)
    ca, cb = RowCollector(3), RowCollector(3)
    stats = run_many(source(), [a, b], [ca, cb])
    assert len(reads) == len(batches) and stats.tiles == 34
    assert made == [a, b]  # one runner each, for the whole run
    assert sizes[id(a)] == [4] * 8 + [2] and sizes[id(b)] == [7] * 4 + [6]
    for model, col in ((a, ca), (b, cb)):
        alone = RowCollector(3)
        run_features(model, iter(batches), alone)
        feats, coords = col.result()
        np.testing.assert_array_equal(feats, alone.result()[0])
        np.testing.assert_array_equal(coords, alone.result()[1])
    with pytest.raises(ValueError, match="2 extractors but 1 sinks"):
        run_many(iter(batches), [a, b], [ca])
