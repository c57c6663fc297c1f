"""Stored-tile reader: pixel identity with openslide and the region reader, fallbacks, edges,
missing tiles, decode-once, thread independence, and the torch decoder path on CPU."""

from __future__ import annotations

import shutil
import sys

import cv2
import numpy as np
import openslide
import pytest
import tifffile

import slideflow as sf
from slideflow import errors
from slideflow.slide.decode import CpuDecoder, TorchDecoder, area_matrix, area_resize_torch
from slideflow.slide.stored_reader import usable_cores

from conftest import CMU, CMU_DICOM, CMU_TIFF, DICOM_CAMELYON, NDPI, TCGA_J2K

pytestmark = pytest.mark.usefixtures("slides")
MPP = 0.499


def _write_pyramid(path, height: int, downsamples: tuple[int, ...]):
    base = np.asarray(openslide.OpenSlide(str(CMU)).read_region((0, 0), 0, (2220, height)))
    base = np.ascontiguousarray(base[..., :3])
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, d in enumerate(downsamples):
            lv = base if d == 1 else cv2.resize(base, (2220 // d, height // d),
                                                interpolation=cv2.INTER_AREA)
            res = 1e4 / (MPP * d)
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(res, res), resolutionunit="CENTIMETER",
                     subfiletype=1 if i else 0)
    return path


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """CMU-1 pixels (2220 x 2960) as a generic JPEG pyramid with exact downsamples 1, 2, 5."""
    return _write_pyramid(tmp_path_factory.mktemp("pyr") / "pyramid.tif", 2960, (1, 2, 5))


@pytest.fixture(scope="module")
def odd_pyramid(tmp_path_factory):
    """2220 x 2967 with a level at 444 x 593: downsample 5 in x, 5.003 in y."""
    return _write_pyramid(tmp_path_factory.mktemp("pyr") / "odd.tif", 2967, (1, 5))


def _all(wsi: sf.WSI, **kw) -> np.ndarray:
    return np.concatenate([t for t, _ in wsi.tiles(**kw)])


def _pair(path, px, um, **kw) -> tuple[sf.WSI, sf.WSI]:
    return (sf.WSI(path, px, um, tile_reader="stored", **kw),
            sf.WSI(path, px, um, tile_reader="region", **kw))


def test_path_chosen_automatically_and_forced():
    assert sf.WSI(CMU, 128, 256).read_path == "stored"
    assert sf.WSI(CMU_DICOM, 128, 256).read_path == "stored"
    assert sf.WSI(CMU_TIFF, 128, 256, mpp=MPP).read_path == "stored"
    assert sf.WSI(DICOM_CAMELYON, 64, 64 * 40.0).read_path == "stored"
    assert sf.WSI(TCGA_J2K, 128, 256, mpp=0.5).read_path == "region"  # JPEG 2000
    assert sf.WSI(NDPI, 128, 128).read_path == "region"  # NDPI
    assert sf.WSI(CMU, 128, 256, tile_reader="region").read_path == "region"
    with pytest.raises(errors.UnsupportedSlideError, match="JP2000.*'region'"):
        sf.WSI(TCGA_J2K, 128, 256, mpp=0.5, tile_reader="stored")
    with pytest.raises(ValueError, match="tile_reader"):
        sf.WSI(CMU, 128, 256, tile_reader="fast")


@pytest.mark.parametrize("path, mpp", [(CMU, None), (CMU_TIFF, MPP)])
@pytest.mark.parametrize("edge", [False, True])
def test_level0_identical_to_openslide(path, mpp, edge):
    """As-is level-0 reads, JPEGTables (SVS, RGB photometric) and a tifffile BigTIFF, with the
    white-padded edge tiles."""
    stored, region = _pair(path, 240, 240 * MPP, mpp=mpp, use_edge_tiles=edge)
    assert stored.full_extract_px == 240 and not stored.level_choice.needs_resize
    tiles = _all(stored, batch_size=7)
    np.testing.assert_array_equal(tiles, _all(region, batch_size=7))
    osr = openslide.OpenSlide(str(path))
    for tile, (x, y) in zip(tiles, stored.coords):
        ref = np.asarray(osr.read_region((int(x), int(y)), 0, (240, 240)))
        rgb = np.where(ref[..., 3:] == 0, 255, ref[..., :3])  # transparent past the edge
        np.testing.assert_array_equal(tile, rgb)
    assert len(tiles) == (130 if edge else 108)
    if edge:  # the last column overhangs the 2220 px slide: white beyond x = 2220
        last = tiles[9]
        assert (last[:, 2220 - 9 * 240:] == 255).all() and (last[:, :60] != 255).any()


@pytest.mark.parametrize("path", [CMU, CMU_DICOM])
def test_downsampled_reads_identical(path):
    stored, region = _pair(path, 128, 256, use_edge_tiles=True)
    assert stored.level_choice.read_px == 513
    tiles = _all(stored, batch_size=6)
    np.testing.assert_array_equal(tiles, _all(region, batch_size=6))
    osr = openslide.OpenSlide(str(CMU))
    for i in (0, 7, 29):
        x, y = stored.coords[i]
        ref = np.asarray(osr.read_region((int(x), int(y)), 0, (513, 513)))
        ref = np.ascontiguousarray(np.where(ref[..., 3:] == 0, 255, ref[..., :3]).astype(np.uint8))
        ref = cv2.resize(ref, (128, 128), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(tiles[i], ref)
        np.testing.assert_array_equal(stored.read_tile(i), ref)


def test_dicom_frames_identical_to_wsidicom():
    stored, region = _pair(DICOM_CAMELYON, 64, 64 * 40.0, use_edge_tiles=True)
    assert len(stored) == 112
    np.testing.assert_array_equal(_all(stored), _all(region))


def test_pyramid_levels(pyramid):
    osr = openslide.OpenSlide(str(pyramid))
    # as-is level 1 (downsample 2): identical to openslide at the level's own pixels
    stored, region = _pair(pyramid, 256, 512 * MPP, use_edge_tiles=True)
    assert stored.level_choice.level == 1 and not stored.level_choice.needs_resize
    tiles = _all(stored, batch_size=5)
    np.testing.assert_array_equal(tiles, _all(region, batch_size=5))
    x, y = stored.coords[-1]
    ref = np.asarray(osr.read_region((int(x), int(y)), 1, (256, 256)))
    np.testing.assert_array_equal(tiles[-1], np.where(ref[..., 3:] == 0, 255, ref[..., :3]))
    # downsampled from level 1 (read 300 px -> 200 px)
    stored, region = _pair(pyramid, 200, 600 * MPP)
    assert stored.level_choice.level == 1 and stored.level_choice.read_px == 300
    np.testing.assert_array_equal(_all(stored), _all(region))
    # level 2 (downsample 5) as-is
    stored, region = _pair(pyramid, 100, 500 * MPP, use_edge_tiles=True)
    assert stored.level_choice.level == 2 and not stored.level_choice.needs_resize
    np.testing.assert_array_equal(_all(stored), _all(region))


def test_fractional_downsample_reads_the_level_grid(odd_pyramid):
    """Openslide interpolates sub-pixel positions at fractional downsamples; the stored reader
    reads the level's own pixels at round(x / ds), as the DICOM and libvips backends do."""
    osr = openslide.OpenSlide(str(odd_pyramid))
    wsi = sf.WSI(odd_pyramid, 100, 500 * MPP, tile_reader="stored", use_edge_tiles=True)
    assert wsi.level_choice.level == 1 and not wsi.level_choice.needs_resize
    w, h = osr.level_dimensions[1]
    level = np.asarray(osr.read_region((0, 0), 1, (w + 100, h + 100)))
    level = np.where(level[..., 3:] == 0, 255, level[..., :3])
    ds = wsi.level_choice.downsample
    for tile, (x, y) in zip(_all(wsi), wsi.coords):
        lx, ly = int(np.rint(x / ds)), int(np.rint(y / ds))
        np.testing.assert_array_equal(tile, level[ly:ly + 100, lx:lx + 100])


def test_missing_tile_reads_white(tmp_path, pyramid):
    path = tmp_path / "holes.tif"
    shutil.copy(pyramid, path)
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags["TileByteCounts"]
        at, size = tag.valueoffset, tag.valuebytecount // tag.count
    with open(path, "r+b") as fh:
        fh.seek(at + 3 * size)  # stored tile (col 3, row 0) becomes empty
        fh.write(bytes(size))
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].databytecounts[3] == 0
    stored, region = _pair(path, 256, 256 * MPP)
    tiles = _all(stored)
    np.testing.assert_array_equal(tiles, _all(region))
    i = int(np.flatnonzero((stored.coords == [768, 0]).all(1))[0])
    assert (tiles[i] == 255).all() and (tiles[i + 1] != 255).any()


def test_decode_once_and_thread_independence(pyramid):
    wsi = sf.WSI(pyramid, 200, 300 * MPP, use_edge_tiles=True)  # 300 px tiles over 256 px
    assert wsi.level_choice.level == 0 and wsi.level_choice.read_px == 300
    runs = []
    for threads, batch in ((1, 64), (2, 7), (3, 1)):
        dec = CpuDecoder()
        runs.append(_all(wsi, num_threads=threads, batch_size=batch, decoder=dec))
        assert dec.decoded == 9 * 12  # every stored tile of level 0, decoded once
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0], other)
    np.testing.assert_array_equal(runs[0], _all(sf.WSI(pyramid, 200, 300 * MPP,
                                                       use_edge_tiles=True,
                                                       tile_reader="region")))
    wsi.qc("otsu")  # a sparse selection decodes only the stored tiles it touches
    dec = CpuDecoder()
    _all(wsi, decoder=dec)
    assert 0 < dec.decoded < 9 * 12


def test_torch_decoder_path_on_cpu():
    torch = pytest.importorskip("torch")
    from slideflow.slide import decode_check

    wsi = sf.WSI(CMU, 128, 256, use_edge_tiles=True)
    cpu = _all(wsi, batch_size=8)
    dec = TorchDecoder("cpu")
    decode_check.forget()
    batches = list(wsi.tiles(batch_size=8, decoder=dec))
    t, c = batches[0]
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.is_contiguous()
    assert t.shape == (8, 128, 128, 3) and c.dtype == np.int64 and c.shape == (8, 2)
    assert dec.decoded == 130 + 1  # each stored tile once, + the colour self-check's tile
    got = torch.cat([b for b, _ in batches]).numpy()
    diff = np.abs(got.astype(int) - cpu)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4  # float area sums round alike
    region = sf.WSI(CMU, 240, 240 * MPP, tile_reader="region")  # region path: uploaded
    up = torch.cat([b for b, _ in region.tiles(decoder=TorchDecoder("cpu"))]).numpy()
    np.testing.assert_array_equal(up, _all(region))
    as_is = sf.WSI(CMU, 240, 240 * MPP, use_edge_tiles=True)
    got = torch.cat([b for b, _ in as_is.tiles(decoder=TorchDecoder("cpu"))]).numpy()
    np.testing.assert_array_equal(got, _all(as_is))  # same libjpeg-turbo, pure gather


@pytest.mark.parametrize("n_in, n_out", [(513, 128), (512, 256), (449, 224), (300, 299)])
def test_torch_area_resize_matches_cv2(n_in, n_out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(n_in).integers(0, 256, (2, n_in, n_in, 3), dtype=np.uint8)
    ref = np.stack([cv2.resize(t, (n_out, n_out), interpolation=cv2.INTER_AREA) for t in x])
    got = area_resize_torch(torch.from_numpy(x), n_out).numpy()
    diff = np.abs(ref.astype(int) - got)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    np.testing.assert_allclose(area_matrix(n_in, n_out).sum(1), 1.0)


@pytest.mark.parametrize("threads, batch", [(1, 64), (2, 1), (2, 5)])
def test_corrupt_stored_tile_names_the_file(tmp_path, pyramid, threads, batch):
    path = tmp_path / "corrupt.tif"
    shutil.copy(pyramid, path)
    with tifffile.TiffFile(path) as tf:
        off, n = tf.pages[0].dataoffsets[1], tf.pages[0].databytecounts[1]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00" * n)
    wsi = sf.WSI(path, 256, 256 * MPP)
    with pytest.raises(errors.SlideReadError, match="corrupt.tif.*col 1, row 0"):
        _all(wsi, num_threads=threads, batch_size=batch)


def test_abandoned_iteration_stops_its_threads(pyramid):
    """Closing the batch iterator early (a consumer that stops) leaves no reader threads."""
    import threading

    wsi = sf.WSI(pyramid, 200, 300 * MPP, use_edge_tiles=True)
    it = wsi.tiles(batch_size=2, num_threads=2)
    first, _ = next(it)
    it.close()
    assert first.shape == (2, 200, 200, 3)
    assert not [t for t in threading.enumerate() if t.name.startswith("sf-stored")]
    np.testing.assert_array_equal(first, _all(wsi)[:2])


def test_reader_threads_default_to_usable_cores():
    from slideflow.slide.reader import default_threads

    assert default_threads() == usable_cores() >= 1


@pytest.mark.parametrize("side", [128, 512])
def test_stored_tile_of_another_size_names_both_sizes(tmp_path, pyramid, side):
    """A stored tile whose JPEG header disagrees with the TIFF's tile size is refused, smaller
    (it would decode into part of the reused buffer) or larger (it would not fit)."""
    import simplejpeg

    path = tmp_path / f"resized{side}.tif"
    shutil.copy(pyramid, path)
    jpeg = simplejpeg.encode_jpeg(np.full((side, side, 3), 90, np.uint8), quality=10)
    with tifffile.TiffFile(path) as tf:  # stored tile 1 now points at the JPEG, appended
        tags = tf.pages[0].tags
        offs, counts = tags["TileOffsets"], tags["TileByteCounts"]
    with open(path, "r+b") as fh:
        end = fh.seek(0, 2)
        fh.write(jpeg)
        for tag, value in ((offs, end), (counts, len(jpeg))):
            size = tag.valuebytecount // tag.count
            fh.seek(tag.valueoffset + size)
            fh.write(value.to_bytes(size, "little"))
    wsi = sf.WSI(path, 256, 256 * MPP)
    with pytest.raises(errors.SlideReadError,
                       match=f"col 1, row 0.*header says {side}x{side} px, the container says "
                             "256x256"):
        _all(wsi, num_threads=2, batch_size=4)


def test_batches_kept_or_viewed_are_never_reused(pyramid):
    """Output arrays are reused only once the consumer has dropped them: kept batches, and
    batches of which only a view is kept, keep their pixels; dropped ones are recycled."""
    wsi = sf.WSI(pyramid, 200, 300 * MPP, use_edge_tiles=True)
    assert len(wsi.coords) == 80  # 10 batches of 8
    ref = [t.copy() for t, _ in wsi.tiles(batch_size=8, num_threads=2)]
    kept = [t for t, _ in wsi.tiles(batch_size=8, num_threads=2)]
    assert len({t.ctypes.data for t in kept}) == len(kept) == 10
    views = [t[2:5] for t, _ in wsi.tiles(batch_size=8, num_threads=2)]
    for a, b, v in zip(ref, kept, views):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[2:5], v)
    seen = set()
    for t, _ in wsi.tiles(batch_size=8, num_threads=2):
        seen.add(t.ctypes.data)
    assert len(seen) < 10  # dropped batches were written again


def test_spare_batch_arrays_stay_within_their_bound(monkeypatch):
    """The process-wide spare list keeps the newest arrays up to SPARE_BYTES, and hands an
    array out once."""
    from slideflow.slide import stored_sched

    monkeypatch.setattr(stored_sched, "_spare", [])
    monkeypatch.setattr(stored_sched, "SPARE_BYTES", 3000)
    arrays = [np.empty((1000,), np.uint8) for _ in range(4)]
    for a in arrays:
        stored_sched._give(a)
    assert [id(a) for a in stored_sched._spare] == [id(a) for a in arrays[:0:-1]]
    got = stored_sched._take((1000,))
    assert got is arrays[3] and len(stored_sched._spare) == 2
    assert stored_sched._take((7,)).shape == (7,)  # no spare of that shape: a new array


def test_reuse_is_off_where_reference_counts_undercount(monkeypatch, pyramid):
    """An interpreter that counts fewer references than are held (borrowed stack references,
    free-threaded builds) fails the probe, and then no batch array is ever reused: a consumer
    that keeps its batches through a path the count cannot see still has its pixels."""
    import types

    from slideflow.slide import stored_sched

    assert stored_sched.counts_are_exact()  # this interpreter counts exactly
    undercount = types.SimpleNamespace(getrefcount=lambda obj: sys.getrefcount(obj) - 2,
                                       _is_gil_enabled=lambda: True)
    monkeypatch.setattr(stored_sched, "sys", undercount)
    monkeypatch.setattr(stored_sched, "_COUNTS_EXACT", None)
    assert not stored_sched.counts_are_exact()
    monkeypatch.setattr(stored_sched, "_spare", [])
    wsi = sf.WSI(pyramid, 200, 300 * MPP, use_edge_tiles=True)
    seen = set()
    for t, _ in wsi.tiles(batch_size=8, num_threads=2):
        seen.add(t.ctypes.data)
    assert stored_sched._spare == []  # nothing handed back for reuse

    free_threaded = types.SimpleNamespace(getrefcount=sys.getrefcount,
                                          _is_gil_enabled=lambda: False)
    monkeypatch.setattr(stored_sched, "sys", free_threaded)
    monkeypatch.setattr(stored_sched, "_COUNTS_EXACT", None)
    assert not stored_sched.counts_are_exact()


@pytest.mark.parametrize("where", ["_deliver", "_finish"])
def test_an_unexpected_error_in_a_task_fails_the_read_instead_of_hanging(monkeypatch, pyramid,
                                                                         where):
    """A bug inside a decode task (outside the read and decode errors it handles) reaches the
    caller as that read's error; nothing waits forever for parts that will not arrive."""
    import threading

    from slideflow.slide import stored_sched

    original = getattr(stored_sched.Scatter, where)
    calls = []

    def broken(self, *args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("bug in a task")
        return original(self, *args)

    monkeypatch.setattr(stored_sched.Scatter, where, broken)
    wsi = sf.WSI(pyramid, 200, 300 * MPP, use_edge_tiles=True)
    outcome = {}

    def read():
        try:
            outcome["tiles"] = sum(len(t) for t, _ in wsi.tiles(batch_size=8, num_threads=2))
        except Exception as exc:  # noqa: BLE001 - the test reports what reached the caller
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the read hung"
    assert outcome["error"].startswith("SlideReadError: ") and "bug in a task" in outcome["error"]
