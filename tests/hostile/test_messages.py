"""Messages say what went wrong with which input: no empty reasons, no silent coercions."""

from __future__ import annotations

import numpy as np
import pytest

from slideflow.errors import DatasetError, TFRecordError
from slideflow.features import SlideJob, generate_bags
from slideflow.io import imgcodec

from .cases import hostile
from .tiny import tiny_extractor
from conftest import CMU


@hostile("memory-limit-message", "a slide read that hits `ulimit -v` (a MemoryError without a "
         "message)", "the slide fails 'MemoryError: out of memory (a memory limit such as "
         "`ulimit -v` ...)' (was 'tile read failed: ' with nothing after it); the batch goes on")
def test_memory_error_has_a_message(tmp_path, monkeypatch):
    from slideflow import bag_runner
    from slideflow.slide.wsi import WSI

    real = bag_runner._job_source

    def starved(job, *args, **kwargs):
        if job.name == "big":
            raise MemoryError()
        return real(job, *args, **kwargs)

    monkeypatch.setattr(bag_runner, "_job_source", starved)
    ext = tiny_extractor(tmp_path / "tiny")
    report = generate_bags([SlideJob("big", slide_path=CMU), SlideJob("ok", slide_path=CMU)],
                           ext, tmp_path / "bags", 112, 224, progress=False)
    assert list(report.done) == ["ok"]
    assert report.failed["big"].startswith("MemoryError: out of memory (a memory limit such as")
    wsi = WSI(CMU, 112, 224)
    assert "tile read failed: out of memory" in str(wsi._read_error(MemoryError()))


@hostile("tfrecord-loc-as-bytes", "a TFRecord whose loc_x is stored as a bytes feature (b'120')",
         "TFRecordError naming the file and record: 'loc_x is bytes, expected an int64 "
         "feature' (was coerced silently)")
def test_tfrecord_location_must_be_int(tmp_path):
    from slideflow.io.tfrecord import TFRecord, TFRecordWriter

    tile = imgcodec.encode(np.zeros((16, 16, 3), np.uint8), "jpg")
    path = tmp_path / "loc.tfrecords"
    with TFRecordWriter(path) as w:
        from slideflow.io import protobuf

        w.write(tile, "s", 8, 8)
        w.write_example(protobuf.encode_example({"image_raw": tile, "slide": "s",
                                                 "loc_x": b"120", "loc_y": 8}))
    with pytest.raises(TFRecordError, match=r"loc.tfrecords.*record 1.*loc_x is bytes"):
        list(TFRecord(path).iter_batches(4, num_threads=1))


@hostile("labels-nan-float", "an annotation column holding 'nan' and 'inf' read with "
         "labels(col, use_float=True)", "DatasetError naming the slides and values (NaN "
         "labels were returned silently)")
def test_non_finite_float_labels(tmp_path):
    import slideflow as sf

    slides = tmp_path / "slides"
    slides.mkdir()
    for name in "abc":
        (slides / f"{name}.svs").symlink_to(CMU)
    P = sf.create_project(tmp_path / "p", slides=slides)
    (P.root / "annotations.csv").write_text("patient,slide,score\np1,a,1.5\np2,b,nan\n"
                                            "p3,c,inf\n")
    ds = sf.load_project(P.root).dataset()
    with pytest.raises(DatasetError, match=r"2 slide\(s\) have a non-finite label \(b='nan', "
                                           r"c='inf'\)"):
        ds.labels("score", use_float=True)
    assert ds.labels("score")[1] == ["1.5", "inf", "nan"]  # categorical: as written


@hostile("tiff-tile-width-zero", "an SVS whose level-0 TileWidth tag is 0",
         "the slide is refused at open: 'level 0 is tiled but its TIFF tags say TileWidth 0' "
         "(every read failed with 'division by zero')")
def test_tile_width_zero(tmp_path):
    import tifffile

    from slideflow.errors import UnsupportedSlideError
    from slideflow.slide.wsi import WSI

    with tifffile.TiffFile(CMU) as tf:
        at = tf.pages[0].tags["TileWidth"].valueoffset
    raw = bytearray(CMU.read_bytes())
    raw[at:at + 2] = b"\0\0"  # a little-endian SHORT
    bad = tmp_path / "tw0.svs"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedSlideError, match="level 0 is tiled but its TIFF tags say "
                                                    "TileWidth 0, TileLength 240"):
        WSI(bad, 112, 224)


@hostile("tiff-zero-tile-table", "an SVS whose level-0 TileOffsets and TileByteCounts are all 0",
         "the slide fails at open: 'level 0 stores no tile data' (gave a bag of 24 white tiles "
         "marked done without QC, '0 tiles' with it)")
def test_zero_tile_table(tmp_path):
    import tifffile

    from slideflow.errors import UnsupportedSlideError

    with tifffile.TiffFile(CMU) as tf:
        tags = [tf.pages[0].tags[k] for k in ("TileOffsets", "TileByteCounts")]
    raw = bytearray(CMU.read_bytes())
    for tag in tags:
        raw[tag.valueoffset:tag.valueoffset + 4 * tag.count] = bytes(4 * tag.count)
    bad = tmp_path / "empty.svs"
    bad.write_bytes(bytes(raw))
    ext = tiny_extractor(tmp_path / "tiny")
    report = generate_bags([SlideJob("empty", slide_path=bad)], ext, tmp_path / "bags", 112,
                           224, progress=False)
    assert not report.done and "level 0 stores no tile data" in report.failed["empty"]
    with pytest.raises(UnsupportedSlideError, match="empty.svs.*level 0 stores no tile data"):
        from slideflow.slide.wsi import WSI

        WSI(bad, 112, 224)
