"""GPU decoder colour self-check, run on the CPU with torchvision's decoder standing in for
nvJPEG: a wrong decoder (YCbCr/RGB mixed up) sends the file to the CPU decoder with one warning,
a right one is used; the verdict is recorded per file in bag provenance."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

import slideflow as sf
from slideflow.slide import decode_check
from slideflow.slide.decode import TorchDecoder
from slideflow.slide.decode_check import MAX_DIFF, compare, decoder_record, wsi_decode_check

from conftest import CMU, CMU_TIFF

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")


class Wrong(TorchDecoder):
    """Decodes right, then hands back YCrCb as if it were RGB (a skipped colour transform)."""

    def decode_many(self, streams):
        out = super().decode_many(streams)
        return [torch.from_numpy(cv2.cvtColor(t.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2YCrCb))
                .permute(2, 0, 1) for t in out]


class OffBy(TorchDecoder):
    """Adds `delta` to the first value of each tile (IDCT rounding, or worse)."""

    def __init__(self, delta: int):
        super().__init__("cpu")
        self.delta = delta

    def decode_many(self, streams):
        out = super().decode_many(streams)
        for t in out:
            t[0, 0, 0] = min(255, int(t[0, 0, 0]) + self.delta)
        return out


class Broken(TorchDecoder):
    def decode_many(self, streams):
        raise RuntimeError("nvjpegDecode failed")


@pytest.fixture(autouse=True)
def fresh():
    decode_check.forget()
    yield
    decode_check.forget()


def _cpu_tiles(wsi):
    return np.concatenate([t for t, _ in wsi.tiles(batch_size=32)])


def test_wrong_decoder_falls_back_with_one_warning(slides, caplog):
    wsi = sf.WSI(CMU, 256, 128)
    wrong = Wrong("cpu")
    with caplog.at_level(logging.WARNING, logger="slideflow"):
        got = [t for t, _ in wsi.tiles(batch_size=32, decoder=wrong)]
        again = [t for t, _ in wsi.tiles(batch_size=32, decoder=wrong)]
    assert all(torch.is_tensor(t) and t.device.type == "cpu" for t in got)  # contract kept
    ref = _cpu_tiles(wsi)
    assert np.array_equal(torch.cat(got).numpy(), ref)
    assert np.array_equal(torch.cat(again).numpy(), ref)
    assert wrong.decoded == 1  # only the check tile went through the wrong decoder
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(CMU) in warnings[0]
    assert "max |difference|" in warnings[0] and "decoding it on the CPU" in warnings[0]
    rec = decoder_record(wsi, wrong)
    assert rec["requested"] == "cpu" and rec["used"] == "cpu" and rec["max_diff"] > MAX_DIFF
    assert rec["psnr_db"] < 60


def test_right_decoder_is_used(slides, caplog):
    wsi = sf.WSI(CMU, 256, 128)
    right = TorchDecoder("cpu")
    with caplog.at_level(logging.WARNING, logger="slideflow"):
        got = torch.cat([t for t, _ in wsi.tiles(batch_size=32, decoder=right)])
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert right.decoded > 1  # it decoded the slide, not only the check tile
    assert np.array_equal(got.numpy(), _cpu_tiles(wsi))
    check = wsi_decode_check(wsi, right)
    assert check.ok and check.max_diff == 0 and check.psnr_db is None


@pytest.mark.parametrize("delta,ok", [(1, True), (2, False)])
def test_tolerance_is_one_per_value(slides, delta, ok):
    wsi = sf.WSI(CMU_TIFF, 256, 128, mpp=0.5)
    check = wsi_decode_check(wsi, OffBy(delta))
    assert check.ok is ok and check.max_diff == delta
    assert check.psnr_db > 60  # one value off: a high PSNR does not excuse a difference of 2


def test_psnr_floor():
    a = np.zeros((64, 64, 3), np.uint8)
    b = a.copy()
    b[::2] = 1  # every other row off by one: within ±1 but PSNR 51 dB
    diff, psnr = compare(b, a)
    assert diff == 1 and psnr == pytest.approx(51.14, abs=0.01) and psnr < 60
    assert compare(a, a) == (0, None)
    assert compare(a, a[:32]) == (255, 0.0)


def test_failing_decoder_falls_back(slides, caplog):
    wsi = sf.WSI(CMU, 256, 128)
    with caplog.at_level(logging.WARNING, logger="slideflow"):
        tiles = torch.cat([t for t, _ in wsi.tiles(batch_size=64, decoder=Broken("cpu"))])
    assert np.array_equal(tiles.numpy(), _cpu_tiles(wsi))
    rec = decoder_record(wsi, Broken("cpu"))
    assert rec["used"] == "cpu" and "nvjpegDecode failed" in rec["error"]
    assert sum("cannot decode" in r.getMessage() for r in caplog.records) == 1


def test_cpu_and_region_paths_have_nothing_to_check(slides):
    wsi = sf.WSI(CMU, 256, 128)
    assert wsi_decode_check(wsi, "cpu") is None
    assert decoder_record(wsi) == {"requested": "cpu", "used": "cpu"}
    region = sf.WSI(CMU, 256, 128, tile_reader="region")
    assert wsi_decode_check(region, Wrong("cpu")) is None
    assert decoder_record(region, Wrong("cpu")) == {"requested": "cpu", "used": "cpu"}


def test_tfrecord_source_checks_and_falls_back(tmp_path, slides, caplog, monkeypatch):
    from slideflow.extract import extract_slide
    from slideflow.io.tfrecord import TFRecord
    from slideflow.tfrecord_decode import decoder_record as tfr_record
    from slideflow.tfrecord_decode import nvjpeg_batches

    res = extract_slide(CMU, tmp_path, 240, 120, mpp=0.5)  # passthrough: Adobe-RGB streams
    tfr = TFRecord(res.tfrecord)
    ref = np.concatenate([t for t, _ in tfr.iter_batches(32)])
    monkeypatch.setattr("slideflow.slide.decode.TorchDecoder", Wrong)
    with caplog.at_level(logging.WARNING, logger="slideflow"):
        got = torch.cat([t for t, _ in nvjpeg_batches(tfr, 32, "cpu")])
    rec = tfr_record(res.tfrecord, "cpu")
    monkeypatch.undo()
    assert np.array_equal(got.numpy(), ref)
    assert rec["used"] == "cpu" and rec["max_diff"] > 1
    assert sum(str(res.tfrecord) in r.getMessage() for r in caplog.records) == 1
    decode_check.forget()
    got = torch.cat([t for t, _ in nvjpeg_batches(tfr, 32, "cpu")])
    assert np.array_equal(got.numpy(), ref)
    assert tfr_record(res.tfrecord, "cpu")["max_diff"] == 0
