"""Stored-JPEG passthrough in tile extraction: stored bytes written as they are, decoded pixels
equal to openslide, edge / missing / odd tiles re-encoded, reasons reported, resume key."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import simplejpeg
from PIL import Image

import slideflow as sf
from slideflow.extract import ExtractionSummary, extract_slide, read_sidecar
from slideflow.io import imgcodec
from slideflow.io.tfrecord import TFRecord
from slideflow.report import summary_table_html
from slideflow.slide.geometry import LevelChoice
from slideflow.slide.passthrough import (
    ADOBE_RGB,
    ADOBE_YCBCR,
    jpeg_head,
    plan_passthrough,
    self_contained,
    wsi_passthrough_plan,
)
from slideflow.slide.stored import StoredLevel

from conftest import CMU, CMU_DICOM, CMU_TIFF

# stored tiles: 240 px in the SVS and the DICOM, 256 px in the TIFF; mpp 0.5 makes them coincide
ALIGNED = [(CMU, 240), (CMU_TIFF, 256), (CMU_DICOM, 240)]


def _extract(tmp_path: Path, slide: Path, px: int, **kw):
    res = extract_slide(slide, tmp_path, px, px / 2, mpp=0.5, **kw)
    assert res.status == "done", res.error
    return res, list(TFRecord(res.tfrecord))


def _reference(slide: Path, px: int, coords: np.ndarray) -> list[np.ndarray]:
    if slide.is_dir():  # DICOM: openslide cannot read it; the region path of the DICOM backend
        wsi = sf.WSI(slide, px, px / 2, mpp=0.5, tile_reader="region", use_edge_tiles=True)
        return list(wsi._tile_reader(coords).read_indices(range(len(coords))))
    osr = openslide.OpenSlide(str(slide))
    return [np.asarray(osr.read_region((int(x), int(y)), 0, (px, px)))[..., :3]
            for x, y in coords]


@pytest.mark.parametrize("slide,px", ALIGNED, ids=lambda v: getattr(v, "name", str(v)))
def test_passthrough_is_the_stored_stream_and_decodes_to_openslide(tmp_path, slides, slide, px):
    res, records = _extract(tmp_path, slide, px, use_edge_tiles=True)
    wsi = sf.WSI(slide, px, px / 2, mpp=0.5, use_edge_tiles=True)
    layout = wsi._stored[0]
    plan = wsi_passthrough_plan(wsi)
    inside = ((wsi.coords + px <= wsi.dimensions).all(axis=1))
    assert (plan.keys >= 0).tolist() == inside.tolist()  # only edge tiles are re-encoded
    assert res.info["passthrough"] == {"tiles": int(inside.sum()), "of": len(wsi),
                                       "re_encoded": {"past the level's edge":
                                                      int((~inside).sum())}}
    refs = _reference(slide, px, wsi.coords[inside])
    stored = layout.read(plan.keys[inside])
    region = sf.WSI(slide, px, px / 2, mpp=0.5, use_edge_tiles=True)
    edge_pixels = region._tile_reader().read_indices(np.flatnonzero(~inside))
    n_ref = n_edge = 0
    for i, rec in enumerate(records):
        data = rec["image_raw"]
        if inside[i]:
            raw = stored[int(plan.keys[i])]
            assert data.endswith(raw[2:])  # the stored stream after its SOI, byte for byte
            assert data == self_contained(layout.stream(raw))
            assert np.array_equal(imgcodec.decode(data), refs[n_ref])
            n_ref += 1
        else:  # re-encoded as without passthrough (q100 of the white-padded read)
            assert data == imgcodec.encode(edge_pixels[n_edge], "jpg", 100)
            n_edge += 1
    assert n_ref == inside.sum() and n_edge == (~inside).sum() > 0
    side = read_sidecar(res.tfrecord)
    assert side["request"]["passthrough"] is True
    assert side["passthrough"]["tiles"] == int(inside.sum())


def test_every_decoder_sees_the_same_colours(tmp_path, slides):
    _, records = _extract(tmp_path, CMU, 240)
    for rec in records[:5]:
        data = rec["image_raw"]
        ref = imgcodec.decode(data)
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        ocv = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        assert np.array_equal(ref, pil) and np.array_equal(ref, ocv)


def _bare(stream: bytes) -> bytes:
    """`stream` without its JFIF APP0 segment (as many scanners store tiles)."""
    assert stream[2:4] == b"\xff\xe0"
    return stream[:2] + stream[4 + int.from_bytes(stream[4:6], "big"):]


def test_colour_marker_follows_libjpeg(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8)
    ycc = simplejpeg.encode_jpeg(img, quality=90, colorspace="RGB", colorsubsampling="444")
    bare = _bare(ycc)
    assert not jpeg_head(bare).jfif and jpeg_head(bare).ids == (1, 2, 3)
    fixed = self_contained(bare)
    assert fixed == bare[:2] + ADOBE_YCBCR + bare[2:]
    assert (jpeg_head(fixed).width, jpeg_head(fixed).height) == (48, 32)
    assert np.array_equal(simplejpeg.decode_jpeg(fixed), simplejpeg.decode_jpeg(ycc))
    assert self_contained(ycc) == ycc  # JFIF: already explicit
    # component ids 'R', 'G', 'B' and no marker: libjpeg decodes raw RGB; the marker says so
    rgb = bytearray(bare)
    sof, sos = rgb.find(b"\xff\xc0"), rgb.find(b"\xff\xda")
    for c, cid in enumerate(b"RGB"):  # frame header and scan header name the components
        rgb[sof + 10 + 3 * c] = rgb[sos + 5 + 2 * c] = cid
    rgb = bytes(rgb)
    fixed = self_contained(rgb)
    assert fixed == rgb[:2] + ADOBE_RGB + rgb[2:]
    assert np.array_equal(simplejpeg.decode_jpeg(fixed), simplejpeg.decode_jpeg(rgb))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fixed))), simplejpeg.decode_jpeg(rgb))


def _layout(counts: list[int], size=(1000, 700), tile=256) -> StoredLevel:
    n = len(counts)
    return StoredLevel(Path("x.tif"), size[0], size[1], tile, tile, np.arange(n) * 10,
                       np.asarray(counts, np.int64))


def test_plan_reasons():
    lay = _layout([5] * 12)  # 4 x 3 stored tiles over 1000 x 700 px
    same = LevelChoice(0, 1.0, 256, 256)
    plan = plan_passthrough(lay, same, np.array([[0, 0], [256, 0], [768, 0], [256, 512]]))
    assert plan.keys.tolist() == [0, 1, -1, -1] and plan.why_not is None
    assert plan.fallback_reasons == {"past the level's edge": 2}
    lay.counts[1] = 0  # missing tile: re-encoded (white), never passed through
    plan = plan_passthrough(lay, same, np.array([[0, 0], [256, 0]]))
    assert plan.keys.tolist() == [0, -1] and plan.fallback_reasons == {"missing in the file": 1}
    plan = plan_passthrough(lay, same, np.array([[13, 0], [269, 256]]))
    assert plan.count == 0 and plan.why_not == "grid offset 13 px"
    plan = plan_passthrough(lay, LevelChoice(0, 1.0, 512, 256), np.array([[0, 0]]))
    assert plan.why_not == "tiles are resampled (512 -> 256 px)"
    plan = plan_passthrough(lay, LevelChoice(0, 1.0, 240, 240), np.array([[0, 0]]))
    assert plan.why_not == "stored tiles are 256x256 px, output tiles 240 px"
    # a coarser level read as-is: level pixels are level-0 / downsample
    plan = plan_passthrough(lay, LevelChoice(1, 4.0, 256, 256), np.array([[1024, 1024]]))
    assert plan.keys.tolist() == [5]


def test_not_aligned_says_why_and_is_unchanged(tmp_path, slides):
    """256 px tiles over the SVS's 240 px stored tiles: the re-encode path, bytes as before."""
    res, records = _extract(tmp_path / "a", CMU, 256)
    assert res.info["passthrough"]["tiles"] == 0
    assert res.info["passthrough"]["why_not"] == "stored tiles are 240x240 px, output tiles 256 px"
    off, recs_off = _extract(tmp_path / "b", CMU, 256, passthrough=False)
    assert [r["image_raw"] for r in records] == [r["image_raw"] for r in recs_off]
    res, _ = _extract(tmp_path / "c", CMU, 240, stride_div=3)  # stride 80 px
    pt = res.info["passthrough"]
    assert pt["re_encoded"] == {"grid offset 80 px": pt["of"] - pt["tiles"]} and pt["tiles"] > 0
    html = summary_table_html(ExtractionSummary(240, 120, results={res.slide: res}),
                              previews=True)
    assert "stored JPEG passthrough: " in html and "grid offset 80 px" in html


def test_opt_out_and_resume_key(tmp_path, slides):
    res, on = _extract(tmp_path, CMU, 240)
    again = extract_slide(CMU, tmp_path, 240, 120, mpp=0.5)
    assert again.status == "reused"
    off = extract_slide(CMU, tmp_path, 240, 120, mpp=0.5, passthrough=False)
    assert off.status == "done" and "passthrough" in off.reason
    side = json.loads((tmp_path / "CMU-1-Small-Region.extract.json").read_text())
    assert side["request"]["passthrough"] is False
    assert side["passthrough"] == {"tiles": 0, "of": len(on), "why_not": "passthrough=False"}
    recs = list(TFRecord(off.tfrecord))
    wsi = sf.WSI(CMU, 240, 120, mpp=0.5)
    pixels = wsi._tile_reader().read_indices(range(len(wsi)))
    assert [r["image_raw"] for r in recs] == [imgcodec.encode(t, "jpg", 100) for t in pixels]
    png = extract_slide(CMU, tmp_path / "png", 240, 120, mpp=0.5, img_format="png")
    assert png.info["passthrough"]["why_not"] == "img_format='png'"


def test_shuffle_and_loose_tiles_keep_stored_bytes(tmp_path, slides):
    res, recs = _extract(tmp_path / "s", CMU, 240, shuffle=True, save_tiles=True,
                         max_tiles=20, tiles_dir=tmp_path / "loose")
    _, plain = _extract(tmp_path / "p", CMU, 240, max_tiles=20)
    assert sorted(r["image_raw"] for r in recs) == sorted(r["image_raw"] for r in plain)
    loose = sorted((tmp_path / "loose").rglob("*.jpg"))
    assert len(loose) == 20
    assert sorted(p.read_bytes() for p in loose) == sorted(r["image_raw"] for r in plain)


def test_cli_flag(cmu_slides_project):
    from typer.testing import CliRunner

    from slideflow.cli import app

    root = str(cmu_slides_project.root)
    # 119.76 µm at the file's 0.499 µm/px is 240 px: the SVS's stored tiles
    args = ["extract-tiles", root, "--tile-px", "240", "--tile-um", "119.76", "--qc", "none"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    side = next(cmu_slides_project.root.rglob("*.extract.json"))
    assert json.loads(side.read_text())["passthrough"] == {"tiles": 108, "of": 108}
    res = CliRunner().invoke(app, [*args, "--no-passthrough"])
    assert res.exit_code == 0, res.output
    meta = json.loads(side.read_text())
    assert meta["request"]["passthrough"] is False and meta["passthrough"]["tiles"] == 0
