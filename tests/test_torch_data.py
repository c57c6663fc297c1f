"""PyTorch datasets over TFRecords: exactly-once epochs with any num_workers, order, labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

from slideflow.errors import DatasetError  # noqa: E402
from slideflow.io import imgcodec  # noqa: E402
from slideflow.io.tfrecord import TFRecordWriter  # noqa: E402
from slideflow.io.torch_data import TileDataset, TileMapDataset  # noqa: E402

SIZES = {"a": 5, "b": 3, "c": 8}
PX = 16


def _tile(slide: str, i: int) -> np.ndarray:
    """A tile whose pixels encode (slide, record) so the image can be checked against its loc."""
    t = np.zeros((PX, PX, 3), np.uint8)
    t[..., 0], t[..., 1] = ord(slide), i
    t[: PX // 2, : PX // 4, 2] = 255  # asymmetric, so flips and rotations are visible
    return t


def write_tile_tfrecords(root: Path) -> list[Path]:
    """One PNG TFRecord per slide of SIZES, tiles from `_tile` (shared with test_tensorflow)."""
    paths = []
    for slide, n in SIZES.items():
        path = root / f"{slide}.tfrecords"
        with TFRecordWriter(path) as w:
            for i in range(n):
                w.write(imgcodec.encode(_tile(slide, i), "png"), slide, 100 * i + 8, 7)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> list[Path]:
    return write_tile_tfrecords(tmp_path_factory.mktemp("tfr"))


def _expected() -> Counter:
    return Counter((s, 100 * i + 8) for s, n in SIZES.items() for i in range(n))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_yields_every_record_once(tfrecords, num_workers, shuffle):
    labels = {"a": 0, "b": 1, "c": 2}
    ds = TileDataset(tfrecords, labels, shuffle=shuffle, seed=3)
    assert len(ds) == sum(SIZES.values())
    dl = DataLoader(ds, batch_size=4, num_workers=num_workers)
    seen: Counter = Counter()
    for img, label, slide, loc in dl:
        assert img.dtype == torch.uint8 and img.shape[1:] == (PX, PX, 3)
        assert loc.dtype == torch.int64 and loc.shape[1] == 2
        for j in range(len(slide)):
            assert label[j].item() == labels[slide[j]]
            assert img[j, 0, 0, 0].item() == ord(slide[j])
            assert img[j, 0, 0, 1].item() == (loc[j, 0].item() - 8) // 100
            seen[(slide[j], loc[j, 0].item())] += 1
    assert seen == _expected()


def test_interleave_orders(tfrecords):
    def order(**kw) -> list[tuple[str, int]]:
        return [(s, int(loc[0])) for _, _, s, loc in TileDataset(tfrecords, **kw)]

    rr = order()
    assert [s for s, _ in rr[:6]] == ["a", "b", "c", "a", "b", "c"]
    assert Counter(rr) == _expected()
    seq = order(interleave=False)
    assert seq == [(s, 100 * i + 8) for s, n in SIZES.items() for i in range(n)]
    s1, s2 = order(shuffle=True, seed=1), order(shuffle=True, seed=1)
    assert s1 == s2 and s1 != rr and Counter(s1) == _expected()
    assert order(shuffle=True, seed=2) != s1
    ds = TileDataset(tfrecords, shuffle=True, seed=1)
    ds.set_epoch(1)
    assert [(s, int(loc[0])) for _, _, s, loc in ds] != s1
    blocks = order(interleave=False, shuffle=True, seed=0)
    changes = sum(a[0] != b[0] for a, b in zip(blocks, blocks[1:]))
    assert changes == 2 and Counter(blocks) == _expected()  # slide after slide


def test_map_dataset_and_transform(tfrecords):
    ds = TileMapDataset(tfrecords, transform=lambda t: t.permute(2, 0, 1).float() / 255)
    assert len(ds) == 16
    img, label, slide, loc = ds[6]  # a has 5, so item 6 is b's record 1
    assert (slide, label, loc.tolist()) == ("b", -1, [108, 7])
    assert img.shape == (3, PX, PX) and img.dtype == torch.float32
    assert ds[-1][2:3] == ("c",) and ds.locate(15) == (2, 7)
    with pytest.raises(IndexError):
        ds[16]
    dl = DataLoader(ds, batch_size=5, shuffle=True, num_workers=2,
                    generator=torch.Generator().manual_seed(0))
    seen = Counter((s, int(x)) for _, _, ss, locs in dl for s, x in zip(ss, locs[:, 0]))
    assert seen == _expected()


def test_missing_label_is_reported(tfrecords):
    with pytest.raises(DatasetError, match="b"):
        TileDataset(tfrecords, {"a": 1, "c": 0})
