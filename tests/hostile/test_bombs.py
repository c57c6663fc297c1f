"""Tiles whose headers lie: sizes are read from the JPEG/PNG header and checked (pixel budget,
the container's tile size) before anything is decoded, so a 3.7 KB tile claiming 60000 x 60000
pixels costs an error naming it, never 11 GB per decode thread, and a stored tile of the wrong
size is never pasted as white or green pixels into a bag marked done."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slideflow as sf
from slideflow.errors import SlideReadError
from slideflow.io import imgcodec

from .cases import hostile, hostile_params
from conftest import CMU


def _jpeg(px: int, value: int = 200, quality: int = 90) -> bytes:
    return imgcodec.encode(np.full((px, px, 3), value, np.uint8), "jpg", quality)


def _claim(jpeg: bytes, h: int, w: int) -> bytes:
    """`jpeg` with its SOF0 header claiming h x w pixels (the scan data stays tiny)."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9:]


def _png_claim(h: int, w: int) -> bytes:
    png = imgcodec.encode(np.zeros((8, 8, 3), np.uint8), "png")
    return png[:16] + struct.pack(">II", w, h) + png[24:]


PROBE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a regression: MemoryError, not OOM
from slideflow.io.tfrecord import TFRecord
try:
    for tiles, locs in TFRecord(sys.argv[1]).iter_batches(8, num_threads=4):
        pass
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
# VmHWM, which exec resets: ru_maxrss carries over the forking pytest process's own peak
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM:"))
print(json.dumps({"error": error, "peak_mib": peak_kib / 1024}))
"""


def _tfrecord(path: Path, raws: list[bytes]) -> Path:
    from slideflow.io.tfrecord import write_records

    write_records(path, [(r, "s", 120 + 240 * i, 120) for i, r in enumerate(raws)])
    return path


def _probe(tfr: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # thread stacks: address space
    out = subprocess.run([sys.executable, "-c", PROBE, str(tfr)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


BOMBS = hostile_params([
    ("tfrecord-jpeg-bomb", "a TFRecord whose 3rd tile is a JPEG whose SOF claims 60000x60000",
     "the read fails naming the TFRecord and record 2 ('header claims 60000x60000 px, outside "
     "the per-tile budget'); peak RSS < 1 GiB (was 11 GB per decode thread)",
     lambda: _claim(_jpeg(240), 60000, 60000)),
    ("tfrecord-first-tile-bomb", "the same bomb as the first record (it sized the batch buffer)",
     "refused before the (8, 60000, 60000, 3) buffer is made; peak RSS < 1 GiB",
     lambda: _claim(_jpeg(240), 60000, 60000)),
    ("tfrecord-png-bomb", "a PNG tile whose IHDR claims 100000x100000",
     "refused from the header, peak RSS < 1 GiB", lambda: _png_claim(100000, 100000)),
])


@pytest.mark.parametrize("bomb", BOMBS)
def test_decompression_bombs_are_refused_before_decoding(bomb, request, tmp_path):
    first = request.node.callspec.id == "tfrecord-first-tile-bomb"
    tiles = [_jpeg(240)] * 5
    at = 0 if first else 2
    tiles[at] = bomb()
    result = _probe(_tfrecord(tmp_path / "b.tfrecords", tiles))
    assert result["error"] is not None and "b.tfrecords" in result["error"]
    assert f"record {at}" in result["error"] and "per-tile budget" in result["error"]
    assert result["peak_mib"] < 1024, result


@hostile("tfrecord-odd-tile-size", "a TFRecord whose 4th tile is 16x16 among 240x240 tiles",
         "the read fails naming the TFRecord, record 3 and both sizes (no decode of it)")
def test_tfrecord_tile_of_another_size(tmp_path):
    from slideflow.errors import TFRecordError
    from slideflow.io.tfrecord import TFRecord

    tiles = [_jpeg(240)] * 5
    tiles[3] = _jpeg(16)
    tfr = _tfrecord(tmp_path / "odd.tfrecords", tiles)
    with pytest.raises(TFRecordError, match=r"odd.tfrecords.*record 3.*16x16 px, the others "
                                            r"240x240"):
        list(TFRecord(tfr).iter_batches(8, num_threads=1))


def _svs_with_tile(tmp_path: Path, data: bytes) -> tuple[Path, int, int]:
    """A copy of CMU-1-Small-Region.svs whose largest stored level-0 tile holds `data`;
    returns (path, col, row) of that tile."""
    import tifffile

    with tifffile.TiffFile(CMU) as tf:
        page = tf.pages[0]
        k = int(np.argmax(page.databytecounts))
        offset, count = page.dataoffsets[k], page.databytecounts[k]
        cols = -(-page.imagewidth // page.tilewidth)
    assert len(data) <= count
    raw = bytearray(CMU.read_bytes())
    raw[offset:offset + count] = data + b"\0" * (count - len(data))
    out = tmp_path / "odd.svs"
    out.write_bytes(bytes(raw))
    return out, k % cols, k // cols


STORED = hostile_params([
    ("stored-tile-16px", "an SVS whose stored 240x240 JPEG tile decodes to 16x16",
     "SlideReadError naming the file, level 0 and the tile (col, row) with both sizes (was a "
     "bag marked done with part-white tiles)", 16),
    ("stored-tile-480px", "the same tile decoding to 480x480",
     "the same error (was green bleed from the oversized tile)", 480),
    ("stored-tile-bomb", "the same tile's SOF claiming 60000x60000",
     "the same error from the header: nothing decoded", 60000),
])


@pytest.mark.parametrize("px", STORED)
def test_stored_tile_of_the_wrong_size(px, tmp_path):
    data = _claim(_jpeg(240, 180), 60000, 60000) if px == 60000 else _jpeg(px, 180, 40)
    slide, col, row = _svs_with_tile(tmp_path, data)
    wsi = sf.WSI(slide, 240, 240 * 0.499, tile_reader="stored")
    with pytest.raises(SlideReadError) as exc:
        for _ in wsi.tiles(batch_size=8, num_threads=2):
            pass
    msg = str(exc.value)
    assert "odd.svs" in msg and f"(col {col}, row {row}) of level 0" in msg
    assert f"{px}x{px} px" in msg and ("240x240" in msg or "per-tile budget" in msg)
    i = int(np.flatnonzero((wsi.coords == (col * 240, row * 240)).all(axis=1))[0])
    with pytest.raises(SlideReadError, match=f"col {col}, row {row}"):  # random access too
        wsi.read_tile(i)


@hostile("tile-pixel-budget-setting", "SLIDEFLOW_MAX_TILE_PIXELS=1000 and a 40x40 tile",
         "refused (1600 px > 1000), naming the setting; the default budget takes 8192x8192")
def test_pixel_budget_is_a_setting(monkeypatch):
    from slideflow.imgheader import ImageHeaderError, max_tile_pixels

    assert max_tile_pixels() == 8192 * 8192
    monkeypatch.setenv("SLIDEFLOW_MAX_TILE_PIXELS", "1000")
    with pytest.raises(ImageHeaderError, match="SLIDEFLOW_MAX_TILE_PIXELS"):
        imgcodec.decode(_jpeg(40))
    assert imgcodec.decode(_jpeg(16)).shape == (16, 16, 3)


@hostile("torch-decoder-bombs", "the same bomb TFRecord and wrong-size stored tile through the "
         "torchvision decoder (nvJPEG's path; run on CPU here)", "refused from the headers "
         "before the batch decode, naming the record or the tile")
def test_torch_decode_paths_check_headers(tmp_path):
    from slideflow.io.tfrecord import TFRecord
    from slideflow.slide.decode import TorchDecoder
    from slideflow.tfrecord_decode import nvjpeg_batches

    tiles = [_jpeg(240)] * 5
    tiles[2] = _claim(_jpeg(240), 60000, 60000)
    tfr = _tfrecord(tmp_path / "b.tfrecords", tiles)
    with pytest.raises(ValueError, match="per-tile budget"):
        list(nvjpeg_batches(TFRecord(tfr), 8, "cpu"))
    slide, col, row = _svs_with_tile(tmp_path, _jpeg(16, 180, 40))
    wsi = sf.WSI(slide, 240, 240 * 0.499, tile_reader="stored")
    with pytest.raises(SlideReadError, match=f"col {col}, row {row}.*16x16 px"):
        for _ in wsi.tiles(batch_size=8, decoder=TorchDecoder("cpu")):
            pass


@hostile("tfrecord-tile-size-changes", "a TFRecord whose tiles are 32x32 in records 0-3 and "
         "16x16 in records 4-7 (batches of 4); one of 32x32 tiles whose .extract.json says "
         "tile_px 240, made into bags", "TFRecordError 'records 4..7 hold 16x16 px tiles, the "
         "first records are 32x32'; the bag fails naming the sidecar's size, nothing written")
def test_tfrecord_tile_size_is_checked_across_batches(tmp_path):
    import json

    from slideflow.errors import TFRecordError
    from slideflow.io.tfrecord import TFRecord, check_tile_size

    from .tiny import tiny_extractor

    tfr = _tfrecord(tmp_path / "mixed.tfrecords", [_jpeg(32)] * 4 + [_jpeg(16)] * 4)
    with pytest.raises(TFRecordError, match=r"records 4\.\.7 hold 16x16 px tiles, the first "
                                            r"records are 32x32"):
        list(check_tile_size(TFRecord(tfr).iter_batches(4, num_threads=1), tfr))
    small = _tfrecord(tmp_path / "small.tfrecords", [_jpeg(32)] * 4)
    (tmp_path / "small.extract.json").write_text(json.dumps({"tile_px": 240,
                                                             "full_extract_px": 240}))
    from slideflow.features import SlideJob, generate_bags

    report = generate_bags([SlideJob("small", tfrecord=small)], tiny_extractor(tmp_path / "t"),
                           tmp_path / "bags", 240, 120, progress=False)
    assert "its .extract.json says 240x240" in report.failed["small"]
    assert not (tmp_path / "bags" / "small.pt").exists()
