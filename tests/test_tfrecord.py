"""TFRecord tile store: framing, Example codec, index, atomic writes, corruption, codecs."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from slideflow.errors import SlideflowError, TFRecordError
from slideflow.io import imgcodec, protobuf
from slideflow.io.tfrecord import (
    TFRecord,
    TFRecordWriter,
    build_index,
    frame,
    get_tfrecord_label,
    index_path_for,
    masked_crc,
    read_index,
    verify,
    write_records,
)

N, PX = 12, 48


def _tiles(n: int = N, px: int = PX, seed: int = 0) -> np.ndarray:
    """Smooth gradients + noise: close enough to tissue for JPEG PSNR to mean something."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px]
    out = np.empty((n, px, px, 3), np.uint8)
    for i in range(n):
        base = np.stack([(xx * (2 + c) + yy * (i + 1) + 40 * c) % 256 for c in range(3)], -1)
        out[i] = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return out


def _write(path: Path, tiles: np.ndarray, fmt: str = "png", slide: str = "slide-1") -> list:
    locs = [(1000 + 37 * i, -5 if i == 3 else 2000 + 11 * i) for i in range(len(tiles))]
    with TFRecordWriter(path) as w:
        for t, (x, y) in zip(tiles, locs):
            w.write(imgcodec.encode(t, fmt), slide, x, y)
    return locs


@pytest.fixture()
def tfr(tmp_path: Path):
    tiles = _tiles()
    path = tmp_path / "slide-1.tfrecords"
    locs = _write(path, tiles)
    return path, tiles, locs


# --------------------------------------------------------------------------- round trips


def test_png_round_trip_is_lossless(tfr):
    path, tiles, locs = tfr
    rec = TFRecord(path)
    assert len(rec) == N and rec.slide == "slide-1" and rec.name == "slide-1"
    assert rec.locations.dtype == np.int64 and rec.locations.tolist() == [list(p) for p in locs]
    for i in (0, 3, N - 1, -1):
        assert np.array_equal(rec.image(i), tiles[i])
    r5 = rec[5]
    assert (r5["slide"], r5["loc_x"], r5["loc_y"]) == ("slide-1", *locs[5])
    assert imgcodec.sniff(r5["image_raw"]) == "png"
    seq = list(rec)
    assert [(r["loc_x"], r["loc_y"]) for r in seq] == locs
    assert all(r["image_raw"] == rec[i]["image_raw"] for i, r in enumerate(seq))
    batches = list(rec.iter_batches(5, num_threads=2))
    assert [len(b[0]) for b in batches] == [5, 5, 2]
    imgs, bl = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    assert imgs.dtype == np.uint8 and np.array_equal(imgs, tiles)
    assert bl.dtype == np.int64 and bl.tolist() == [list(p) for p in locs]
    with pytest.raises(IndexError):
        rec[N]


def test_jpeg_round_trip_psnr(tmp_path):
    tiles = _tiles()
    path = tmp_path / "j.tfrecords"
    _write(path, tiles, "jpg")
    out = np.concatenate([b for b, _ in TFRecord(path).iter_batches(8)]).astype(np.float64)
    mse = np.mean((out - tiles) ** 2)
    assert 10 * np.log10(255**2 / mse) > 40
    assert imgcodec.sniff(TFRecord(path)[0]["image_raw"]) == "jpg"


def test_codec_batches_and_errors():
    tiles = _tiles(4)
    enc = imgcodec.encode_batch(tiles, "png", num_threads=2)
    assert enc == [imgcodec.encode(t, "png") for t in tiles]  # deterministic, order kept
    assert np.array_equal(imgcodec.decode_batch(enc, num_threads=2), tiles)
    assert imgcodec.image_shape(imgcodec.encode(tiles[0], "jpg")) == (PX, PX)
    assert imgcodec.image_shape(enc[0]) == (PX, PX)
    q80 = imgcodec.encode(tiles[0], "jpg", 80)
    assert len(q80) < len(imgcodec.encode(tiles[0], "jpg", 100))
    with pytest.raises(ValueError, match="uint8"):
        imgcodec.encode(tiles[0].astype(np.float32))
    with pytest.raises(ValueError, match="format"):
        imgcodec.encode(tiles[0], "bmp")
    with pytest.raises(imgcodec.ImageDecodeError) as e:
        imgcodec.decode_batch([enc[0], b"\xff\xd8\xffnot a jpeg at all"])
    assert e.value.index == 1


def test_identical_writes_are_byte_identical(tmp_path):
    tiles = _tiles()
    a, b = tmp_path / "a" / "s.tfrecords", tmp_path / "b" / "s.tfrecords"
    _write(a, tiles, "jpg")
    _write(b, tiles, "jpg")
    assert a.read_bytes() == b.read_bytes()
    assert index_path_for(a).read_bytes() == index_path_for(b).read_bytes()
    assert sorted(p.name for p in a.parent.iterdir()) == ["s.index.npz", "s.tfrecords"]
    umask = os.umask(0o022)
    os.umask(umask)
    for p in (a, index_path_for(a)):  # not mkstemp's 0600: tiles are shared data
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_index_layout_points_at_records(tfr):
    path, _, locs = tfr
    ipath = path.with_name("slide-1.index.npz")
    assert index_path_for(path) == ipath
    with zipfile.ZipFile(ipath) as zf:  # np.savez layout: stored, not compressed
        assert sorted(zf.namelist()) == ["arr_0.npy", "locations.npy"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    z = np.load(ipath)
    off, loc = z["arr_0"], z["locations"]
    assert off.dtype == np.int64 and off.shape == (N, 2) and loc.dtype == np.int64
    assert loc.tolist() == [list(p) for p in locs]
    raw = path.read_bytes()
    assert off[0, 0] == 0 and off[-1].sum() == len(raw)
    for start, length in off:
        (n,) = struct.unpack_from("<Q", raw, start)
        assert n + 16 == length
        assert struct.unpack_from("<I", raw, start + 8)[0] == masked_crc(raw[start:start + 8])
    assert np.array_equal(read_index(path).offsets, off)


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_masked_crc_known_values():
    assert masked_crc(b"") == _mask(0) == 0xA282EAD8
    assert masked_crc(b"123456789") == _mask(0xE3069283)  # the CRC-32C check value
    framed = frame(b"abc")
    assert framed[:8] == struct.pack("<Q", 3) and framed[12:15] == b"abc" and len(framed) == 19
    assert struct.unpack_from("<I", framed, 15)[0] == masked_crc(b"abc")


def test_masked_crc_matches_independent_crc32c():
    google_crc32c = pytest.importorskip("google_crc32c")
    for data in (b"123456789", bytes(range(256)) * 40):
        assert masked_crc(data) == _mask(google_crc32c.value(data))


# --------------------------------------------------------------------------- interoperability


def _in_fresh_interpreter(code: str) -> None:
    """Run a check that imports the `tfrecord` package in its own interpreter: its copy of
    TensorFlow's Example protos cannot share a process with TensorFlow (duplicate protobuf
    symbols), and test_tensorflow.py imports TensorFlow."""
    if importlib.util.find_spec("tfrecord") is None:
        pytest.skip("the tfrecord package is not installed")
    out = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_independent_tfrecord_package_reads_our_files(tfr):
    path, tiles, locs = tfr
    ours = TFRecord(path)
    expected = [(ours[i]["image_raw"].hex(), [int(v) for v in locs[i]]) for i in range(N)]
    _in_fresh_interpreter(f"""
from tfrecord.reader import tfrecord_loader
theirs = list(tfrecord_loader({str(path)!r}, None))
expected = {expected!r}
assert len(theirs) == len(expected) == {N}
for rec, (raw, loc) in zip(theirs, expected):
    assert bytes(rec["image_raw"]).hex() == raw
    assert bytes(rec["slide"]) == b"slide-1"
    assert [int(rec["loc_x"][0]), int(rec["loc_y"][0])] == loc
""")


def test_encoding_equals_protobuf_deterministic_serialization():
    ours = protobuf.encode_example({"loc_y": 2**62, "slide": "é-slide", "loc_x": -123456789012,
                                    "image_raw": b"\xff\xd8\xff" + bytes(300),
                                    "weights": [0.5, -1.25]})
    _in_fresh_interpreter(f"""
from tfrecord import example_pb2
ex = example_pb2.Example()
f = ex.features.feature
f["slide"].bytes_list.value.append("é-slide".encode())
f["image_raw"].bytes_list.value.append(b"\\xff\\xd8\\xff" + bytes(300))
f["loc_x"].int64_list.value.append(-123456789012)
f["loc_y"].int64_list.value.append(2**62)
f["weights"].float_list.value.extend([0.5, -1.25])
ours = bytes.fromhex({ours.hex()!r})
assert ours == ex.SerializeToString(deterministic=True)
back = example_pb2.Example.FromString(ours)
assert list(back.features.feature["loc_x"].int64_list.value) == [-123456789012]
""")


def _field(num: int, payload: bytes) -> bytes:
    return protobuf._varint(num << 3 | 2) + protobuf._varint(len(payload)) + payload


def test_decodes_tensorflow_style_records(tmp_path):
    """Entries in another order, unpacked int64 varints, an unknown feature and unknown fields."""
    neg = protobuf._varint(-7)
    assert len(neg) == 10
    int_unpacked = _field(3, b"\x08" + neg)  # Feature{int64_list{value: -7 (not packed)}}
    loc_y = _field(3, b"\x08\x2a")  # value: 42, unpacked
    img = _field(1, _field(1, b"\x89PNG\r\n\x1a\nxx"))
    slide = _field(1, _field(1, b"tf-slide"))
    extra = _field(2, _field(1, struct.pack("<2f", 1.5, 2.0)))
    unknown = b"\x28\x05"  # field 5, varint: must be skipped
    entries = [("loc_y", loc_y), ("slide", slide), ("extra", extra), ("loc_x", int_unpacked),
               ("image_raw", img)]
    features = b"".join(_field(1, _field(1, k.encode()) + unknown + _field(2, v))
                        for k, v in entries)
    example = unknown + _field(1, features)
    dec = protobuf.decode_example(example)
    assert dec["loc_x"] == protobuf.Feature("int64_list", [-7])
    assert dec["loc_y"].values == [42] and dec["extra"].values == [1.5, 2.0]
    path = tmp_path / "tf.tfrecords"
    path.write_bytes(frame(example) * 2)
    rec = TFRecord(path)  # no index: rebuilt by scanning
    assert len(rec) == 2 and rec.locations.tolist() == [[-7, 42], [-7, 42]]
    r = rec[1]
    assert (r["slide"], r["loc_x"], r["loc_y"], r["extra"]) == ("tf-slide", -7, 42, [1.5, 2.0])
    assert r["image_raw"] == b"\x89PNG\r\n\x1a\nxx"
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode_example(_field(1, b"\x0a\x05ab"))  # length runs past the end


def test_extra_features_and_write_records(tmp_path):
    path = tmp_path / "x.tfrecords"
    png = imgcodec.encode(_tiles(1)[0], "png")
    n = write_records(path, [(png, "x", 1, 2),
                             {"image_raw": png, "slide": "x", "loc_x": 3, "loc_y": 4,
                              "label": 7, "tags": [b"a", b"b"]}])
    rec = TFRecord(path)
    assert n == 2 and len(rec) == 2 and rec.locations.tolist() == [[1, 2], [3, 4]]
    assert rec[1]["label"] == 7 and rec[1]["tags"] == [b"a", b"b"] and "label" not in rec[0]
    with pytest.raises(ValueError, match="replace"), TFRecordWriter(tmp_path / "y.tfrecords") as w:
        w.write(png, "y", 0, 0, extra={"loc_x": 1})


# --------------------------------------------------------------------------- reliability


def test_truncated_file_raises_and_keeps_file(tfr):
    path, _, _ = tfr
    off = read_index(path).offsets
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(TFRecordError) as e:
        list(TFRecord(path))
    msg = str(e.value)
    assert str(path) in msg and f"record {N - 1}" in msg and f"offset {off[-1, 0]}" in msg
    with pytest.raises(TFRecordError, match=f"record {N - 1}"):
        TFRecord(path)[0]  # the index no longer matches: the rebuild scan finds the damage
    with pytest.raises(TFRecordError):
        verify(path)
    assert path.exists() and index_path_for(path).exists()
    assert isinstance(e.value, SlideflowError)


def test_flipped_byte_raises_and_keeps_file(tfr):
    path, _, _ = tfr
    off = read_index(path).offsets
    raw = bytearray(path.read_bytes())
    raw[off[4, 0] + 40] ^= 0x10  # inside record 4's data
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError) as e:
        for _ in TFRecord(path).iter_batches(3):
            pass
    msg = str(e.value)
    assert str(path) in msg and "record 4 " in msg and f"offset {off[4, 0]}" in msg
    assert "checksum" in msg
    with pytest.raises(TFRecordError, match="record 4 .*checksum"):
        TFRecord(path, verify=True)[4]
    assert TFRecord(path, verify=True)[5]["loc_x"] == 1000 + 37 * 5  # other records still read
    raw[off[2, 0] + 3] ^= 0x01  # record 2's length field
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="record 2 .*header"):
        list(TFRecord(path))
    assert path.exists() and index_path_for(path).exists()


def test_missing_and_stale_index_are_rebuilt(tfr, tmp_path):
    path, _, locs = tfr
    ipath = index_path_for(path)
    good = ipath.read_bytes()
    ipath.unlink()
    assert TFRecord(path).locations.tolist() == [list(p) for p in locs]
    assert ipath.read_bytes() == good  # rebuilt byte-identically
    other = tmp_path / "other.tfrecords"
    _write(other, _tiles(3))
    ipath.write_bytes(index_path_for(other).read_bytes())  # stale: another file's index
    assert len(TFRecord(path)) == N and ipath.read_bytes() == good
    ipath.write_bytes(b"garbage")
    assert TFRecord(path)[7]["loc_x"] == locs[7][0] and ipath.read_bytes() == good
    legacy = tmp_path / "legacy.tfrecords"  # an index without locations (older Slideflow)
    _write(legacy, _tiles(2))
    offsets = read_index(legacy).offsets
    with index_path_for(legacy).open("wb") as fh:
        np.savez(fh, offsets)
    assert read_index(legacy).locations is None
    assert TFRecord(legacy).locations.shape == (2, 2)
    assert read_index(legacy).locations is not None
    assert build_index(path, write=False).offsets.shape == (N, 2)


def test_exception_in_writer_leaves_nothing(tmp_path):
    path = tmp_path / "sub" / "s.tfrecords"
    png = imgcodec.encode(_tiles(1)[0], "png")
    with pytest.raises(RuntimeError), TFRecordWriter(path) as w:
        w.write(png, "s", 0, 0)
        raise RuntimeError("boom")
    assert list(path.parent.iterdir()) == []
    _write(path, _tiles(2))
    before = path.read_bytes(), index_path_for(path).read_bytes()
    with pytest.raises(KeyError), TFRecordWriter(path) as w:  # an overwrite that fails
        w.write(png, "s", 0, 0)
        raise KeyError("boom")
    assert (path.read_bytes(), index_path_for(path).read_bytes()) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.index.npz", "s.tfrecords"]


def test_empty_tfrecord(tmp_path):
    path = tmp_path / "empty.tfrecords"
    assert write_records(path, []) == 0
    rec = TFRecord(path)
    assert len(rec) == 0 and list(rec) == [] and list(rec.iter_batches(4)) == []
    assert rec.locations.shape == (0, 2) and rec.slide == "empty"


def test_tfrecord_label():
    assert get_tfrecord_label(256, 302) == "256px_302um"
    assert get_tfrecord_label(256, 302.0) == "256px_302um"
    assert get_tfrecord_label(299, 128.5) == "299px_128.5um"
    assert get_tfrecord_label(256, np.int64(128)) == "256px_128um"
    assert get_tfrecord_label(256, "20x") == "256px_20x"
    assert get_tfrecord_label(256, "10X") == "256px_10x"
    assert get_tfrecord_label(256, "128") == "256px_128um"
    with pytest.raises(ValueError):
        get_tfrecord_label(256, "twenty")
    with pytest.raises(ValueError):
        get_tfrecord_label(256, -3)


def test_io_package_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys, slideflow.io.tfrecord as t, slideflow.io as io; io.TFRecord; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
