"""Slides read from URLs against real servers on 127.0.0.1: a Range-capable HTTP server and
moto's S3 (both with fault injection, tests/remote_servers.py). Tiles must be pixel-identical
to the local file's, batches must cost a bounded number of requests, faults are retried or
fail the slide with the URL, byte range and attempt count named, and the cache never holds a
half-written entry."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import slideflow as sf
from slideflow.errors import SlideNotFoundError, SlideReadError
from slideflow.io.atomic import TMP_MARK
from slideflow.remote.cache import SlideCache, parse_size
from slideflow.remote.source import BLOCK, merge_spans

from conftest import CMU, CMU_TIFF, TCGA_J2K
from remote_servers import RangeHTTPServer

TILE = dict(tile_px=64, tile_um=64)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_BACKOFF", "0.01")
    monkeypatch.setenv("SLIDEFLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def http(http_slides):
    yield http_slides
    http_slides.faults.clear()


@pytest.fixture()
def s3(s3_slides):
    yield s3_slides
    s3_slides.faults.clear()


def _tiles(wsi, batch_size=16):
    return np.concatenate([t for t, _ in wsi.tiles(batch_size=batch_size)])


@pytest.fixture(scope="module")
def local_cmu(slides):
    with sf.WSI(CMU, **TILE) as w:
        return _tiles(w), w.coords.copy()


def test_merge_spans():
    assert merge_spans([(10, 20), (0, 5), (30, 40)], gap=4) == [(0, 5), (10, 20), (30, 40)]
    assert merge_spans([(10, 20), (0, 5), (25, 40)], gap=5) == [(0, 40)]
    assert merge_spans([(0, 10), (10, 30)], gap=0, limit=20) == [(0, 10), (10, 30)]


@pytest.mark.parametrize("where", ["http", "s3"])
def test_svs_read_in_place_pixel_identical(where, http, s3, local_cmu):
    url = f"{http.url}/cmu.svs" if where == "http" else "s3://cohort/slides/cmu.svs"
    server = http if where == "http" else s3
    with sf.WSI(url, **TILE) as w:
        assert w.read_path == "stored" and w.name == "cmu" and w.path == url
        assert w.fetch_stats["requests"] <= 6  # HEAD + IFDs/tables + the QC level
        before = server.ranged_gets()
        batches = 0
        out = []
        for tiles, _ in w.tiles(batch_size=16):
            out.append(tiles)
            batches += 1
        gets = server.ranged_gets() - before
    tiles, coords = local_cmu
    assert np.array_equal(np.concatenate(out), tiles)
    assert batches == -(-len(tiles) // 16) and len(tiles) == 391
    # batch 0's stored tiles, then each next two batches': one merged ranged GET at most
    assert gets <= 1 + batches // 2


def test_random_access_and_region_path_match(http, local_cmu):
    with sf.WSI(f"{http.url}/cmu.svs", **TILE, tile_reader="region") as w:
        assert w.read_path == "region"
        assert np.array_equal(w.read_tile(7), local_cmu[0][7])


def test_generic_tiff_in_place(http, slides):
    with sf.WSI(CMU_TIFF, 128, 128, mpp=0.499) as a, \
            sf.WSI(f"{http.url}/cmu.tiff", 128, 128, mpp=0.499) as b:
        assert b.read_path == "stored" and b.reader.name == "tiffslide"
        assert np.array_equal(_tiles(a), _tiles(b))


def test_jpeg2000_goes_through_the_cache(s3, tmp_path, slides):
    with sf.WSI(TCGA_J2K, 128, 128, mpp=0.5) as a:
        want = _tiles(a)
    url = "s3://cohort/slides/tcga.svs"
    with sf.WSI(url, 128, 128, mpp=0.5) as b:
        assert b.reader.name == "openslide" and b.name == "tcga"
        assert np.array_equal(_tiles(b), want)
        first = b.fetch_stats
    cache = SlideCache()
    [(key, size, _)] = cache.entries()
    # the download, plus the IFD blocks read to learn it cannot be read in place
    assert size == TCGA_J2K.stat().st_size and size < first["bytes_fetched"] <= size + 4 * BLOCK
    record = json.loads((cache.folder / f"{key}.json").read_text())
    assert record["url"] == url and record["objects"][0]["bytes"] == size
    before = s3.ranged_gets()
    with sf.WSI(url, 128, 128, mpp=0.5) as c:  # cached: a HEAD, no GET
        assert c.fetch_stats["bytes_fetched"] == 0
    assert s3.ranged_gets() == before


@pytest.mark.parametrize("fault", ["503", "drop", "short"])
@pytest.mark.parametrize("where", ["http", "s3"])
def test_transient_faults_are_retried(fault, where, http, s3, local_cmu):
    url = f"{http.url}/cmu.svs" if where == "http" else "s3://cohort/slides/cmu.svs"
    server = http if where == "http" else s3
    with sf.WSI(url, **TILE) as w:
        server.faults[:] = [fault, fault]
        got = _tiles(w)
        assert w.fetch_stats["retries"] == 2
    server.faults.clear()
    assert np.array_equal(got, local_cmu[0])


def test_persistent_fault_names_url_range_attempts(http, monkeypatch):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_RETRIES", "2")
    url = f"{http.url}/cmu.svs"
    with sf.WSI(url, **TILE) as w:
        http.faults[:] = ["503"] * 3
        with pytest.raises(SlideReadError) as err:
            _tiles(w)
    http.faults.clear()
    msg = str(err.value)
    assert url in msg and "failed after 3 attempts" in msg and "bytes " in msg


def test_object_changed_between_reads_fails_clearly(slides):
    server = RangeHTTPServer({"a.svs": CMU.read_bytes()})
    try:
        with sf.WSI(f"{server.url}/a.svs", **TILE) as w:
            server.change("a.svs", CMU.read_bytes() + b"\0")
            with pytest.raises(SlideReadError, match="changed since it was opened"):
                _tiles(w)
    finally:
        server.close()


def test_missing_object(http):
    with pytest.raises(SlideNotFoundError, match="nothing.svs"):
        sf.WSI(f"{http.url}/nothing.svs", **TILE)


def test_failed_download_leaves_no_cache_entry(http, monkeypatch, tmp_path):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_RETRIES", "1")
    cache = SlideCache(tmp_path / "c")
    http.faults[:] = ["drop", "drop"]
    with pytest.raises(OSError, match="failed after 2 attempts"):
        cache.fetch(f"{http.url}/tcga.svs")
    http.faults.clear()
    assert cache.entries() == []
    assert [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()] == []
    http.faults[:] = ["drop"]  # one drop: retried, the entry completes
    path = cache.fetch(f"{http.url}/tcga.svs")
    assert path.read_bytes() == TCGA_J2K.read_bytes()
    assert not [p for p in (tmp_path / "c").rglob(f"*{TMP_MARK}*")]


def test_cache_refetches_a_changed_object_and_evicts_lru(tmp_path):
    server = RangeHTTPServer({"a.ndpi": b"A" * 1000, "b.ndpi": b"B" * 1000,
                              "c.ndpi": b"C" * 1000})
    try:
        cache = SlideCache(tmp_path / "c", max_bytes=2500)
        pa = cache.fetch(f"{server.url}/a.ndpi")
        assert pa.read_bytes() == b"A" * 1000 and pa.name == "a.ndpi"
        server.change("a.ndpi", b"Z" * 1200)
        assert cache.fetch(f"{server.url}/a.ndpi").read_bytes() == b"Z" * 1200
        cache.fetch(f"{server.url}/b.ndpi")
        cache.fetch(f"{server.url}/a.ndpi")  # a used again: b is now the oldest
        cache.fetch(f"{server.url}/c.ndpi")
        names = sorted(p.name for p in (tmp_path / "c").rglob("*.ndpi"))
        assert names == ["a.ndpi", "c.ndpi"]
        assert sum(s for _, s, _ in cache.entries()) <= 2500
    finally:
        server.close()


def test_concurrent_fetches_download_once(tmp_path):
    data = bytes(range(256)) * 4000
    server = RangeHTTPServer({"x.ndpi": data})
    try:
        caches = [SlideCache(tmp_path / "c") for _ in range(4)]
        paths: list = []
        threads = [threading.Thread(target=lambda c=c: paths.append(
            c.fetch(f"{server.url}/x.ndpi"))) for c in caches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(paths)) == 1 and paths[0].read_bytes() == data
        assert server.ranged_gets() == 1  # one download of 1 MB, one request
    finally:
        server.close()


def test_parse_size():
    assert parse_size("50G") == 50 << 30 and parse_size("512m") == 512 << 20
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError, match="K/M/G/T"):
        parse_size("lots")


def test_pyramid_levels_read_in_place_match_local(tmp_path_factory, slides):
    """A 3-level JPEG pyramid (tifffile-written, generic TIFF): tiles read from a downsampled
    level over HTTP equal the local file's (same level choice and pixel grid)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from synthetic import make_pyramid

    path = make_pyramid(tmp_path_factory.mktemp("pyr") / "pyr.tif", 3001, 2999)
    server = RangeHTTPServer({"pyr.tif": path.read_bytes()})
    try:
        for px, um in ((64, 512), (100, 300)):
            with sf.WSI(path, px, um) as a, sf.WSI(f"{server.url}/pyr.tif", px, um) as b:
                assert b.level_choice == a.level_choice and a.level_choice.level > 0
                assert b.read_path == a.read_path == "stored"
                assert np.array_equal(_tiles(a), _tiles(b))
    finally:
        server.close()


def test_credentials_never_in_messages(http):
    url = f"http://reader:s3cret@{http.url.split('://', 1)[1]}/nothing.svs"
    with pytest.raises(SlideNotFoundError) as err:
        sf.WSI(url, **TILE)
    assert "s3cret" not in str(err.value) and "nothing.svs" in str(err.value)


def test_anonymous_access_is_explicit(monkeypatch):
    from slideflow.remote.url import filesystem

    monkeypatch.delenv("SLIDEFLOW_ANON", raising=False)
    assert filesystem("s3://public-bucket/a.svs")[0].anon is False
    monkeypatch.setenv("SLIDEFLOW_ANON", "1")
    fs, path = filesystem("s3://public-bucket/a.svs")
    assert fs.anon is True and path == "public-bucket/a.svs"


def test_dicom_series_prefix_is_one_slide(s3, slides):
    """A multi-instance DICOM WSI under a bucket prefix: listed as one slide, cached as a
    folder, tiles identical to the local folder's."""
    from slideflow.slide.remote_open import find_remote_slides

    from conftest import CMU_DICOM

    for f in sorted(CMU_DICOM.iterdir()):
        s3.put("dicom", f"cases/case-1/{f.name}", f)
    s3.put("dicom", "cases/other.svs", CMU)
    assert find_remote_slides("s3://dicom/cases/", recursive=True) == [
        "s3://dicom/cases/case-1/", "s3://dicom/cases/other.svs"]
    assert find_remote_slides("s3://dicom/cases/") == ["s3://dicom/cases/other.svs"]
    with sf.WSI(CMU_DICOM, **TILE) as a, sf.WSI("s3://dicom/cases/case-1/", **TILE) as b:
        assert b.name == "case-1" and b.backend == "dicom"
        assert np.array_equal(_tiles(a), _tiles(b))


def test_eviction_skips_an_entry_being_downloaded(tmp_path):
    from slideflow.io.locks import SlideLock

    server = RangeHTTPServer({"a.ndpi": b"A" * 1000, "b.ndpi": b"B" * 1000})
    try:
        cache = SlideCache(tmp_path / "c", max_bytes=1500)
        cache.fetch(f"{server.url}/a.ndpi")
        key_a = cache.key(f"{server.url}/a.ndpi")
        with SlideLock(cache.folder, key_a):  # "another process" holds a's entry
            cache.fetch(f"{server.url}/b.ndpi")
            assert sorted(k for k, _, _ in cache.entries()) == sorted(
                [key_a, cache.key(f"{server.url}/b.ndpi")])
        assert cache.evict() == [key_a]  # released: the oldest goes
    finally:
        server.close()


def test_progress_counts_fetched_bytes(caplog):
    import logging

    from slideflow.progress import SlideProgress

    caplog.set_level(logging.INFO, logger="slideflow")
    bar = SlideProgress(2, "features")
    bar.add_fetched({"requests": 7, "bytes_fetched": 1_900_000, "retries": 0})
    bar.slide_done("a", 24, {"requests": 7, "bytes_fetched": 1_900_000, "retries": 0})
    bar.add_fetched(None)
    bar.slide_done("b", 3)
    assert (bar.requests, bar.bytes_fetched) == (7, 1_900_000)
    assert "1.9 MB fetched" in bar._status()
    assert "a done (24 tiles, 1.9 MB in 7 requests) [1/2]" in caplog.text
    assert "b done (3 tiles) [2/2]" in caplog.text


def test_s3_object_replaced_mid_read_fails_clearly(s3, slides):
    url = s3.put("cohort", "slides/moving.svs", CMU)
    with sf.WSI(url, **TILE) as w:
        s3.put("cohort", "slides/moving.svs", CMU.read_bytes() + b"\0")
        with pytest.raises(SlideReadError, match="changed since it was opened"):
            _tiles(w)


def test_processes_sharing_a_cache_download_once(tmp_path):
    """Three processes ask for one slide at once: one download, three identical paths; a
    temporary file left by a dead process is removed."""
    import subprocess
    import sys

    data = bytes(range(256)) * 8000
    server = RangeHTTPServer({"x.ndpi": data})
    try:
        cache = SlideCache(tmp_path / "c")
        entry = cache.folder / cache.key(f"{server.url}/x.ndpi")
        entry.mkdir(parents=True)
        from slideflow.io.atomic import host_tag

        dead = entry / f"x.ndpi{TMP_MARK}999999999-{host_tag()}-abcd"
        dead.write_bytes(b"half")
        code = ("import sys; from slideflow.remote.cache import SlideCache; "
                f"print(SlideCache({str(cache.folder)!r}).fetch({server.url + '/x.ndpi'!r}))")
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  text=True) for _ in range(3)]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert len(set(outs)) == 1 and open(outs[0], "rb").read() == data
        assert server.ranged_gets() == 1 and not dead.exists()
    finally:
        server.close()


def test_jobs_and_manifests_keep_urls(tmp_path):
    from slideflow.features import jobs_from_paths
    from slideflow.io.manifest import read_manifest

    jobs = jobs_from_paths(["s3://b/cases/slide-1.svs", "s3://b/cases/slide-1.svs",
                            str(CMU)])
    assert [(j.name, j.slide_path) for j in jobs] == [
        ("slide-1", "s3://b/cases/slide-1.svs"), (CMU.stem, CMU)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("sample_id,image_path\na,https://host/x/a.svs\nb,rel/b.svs\n")
    rows = read_manifest(manifest)
    assert rows[0].image_path == "https://host/x/a.svs"
    assert rows[1].image_path == tmp_path / "rel" / "b.svs"


def test_cli_info_and_preview_take_urls(http, tmp_path):
    from typer.testing import CliRunner

    from slideflow.cli import app

    res = CliRunner().invoke(app, ["info", f"{http.url}/cmu.svs", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["path"] == f"{http.url}/cmu.svs" and data["dimensions"] == [2220, 2967]
    assert data["backend"] == "tiffslide" and data["vendor"] == "aperio"
    out = tmp_path / "p.png"
    res = CliRunner().invoke(app, ["preview", f"{http.url}/cmu.svs", "-o", str(out)])
    assert res.exit_code == 0 and out.stat().st_size > 0, res.output


def test_weak_etag_is_not_sent_as_if_match(slides, monkeypatch):
    """A server giving weak ETags (W/"..."): reads work (no If-Match that could never match)."""
    import remote_servers

    monkeypatch.setattr(remote_servers, "_etag", lambda data: 'W/"v1"')
    server = RangeHTTPServer({"a.svs": CMU.read_bytes()})
    try:
        with sf.WSI(f"{server.url}/a.svs", **TILE) as w:
            assert len(_tiles(w)) == 391
    finally:
        server.close()


def test_torch_decoder_path_reads_a_url_like_the_local_file(http, slides):
    """The GPU decoder's path (run here with torch on the CPU): one merged request per batch,
    tiles equal to the same decoder on the local file."""
    torch = pytest.importorskip("torch")
    from slideflow.slide.decode import TorchDecoder

    big = dict(tile_px=128, tile_um=256)
    with sf.WSI(CMU, **big) as a, sf.WSI(f"{http.url}/cmu.svs", **big) as b:
        want = torch.cat([t for t, _ in a.tiles(batch_size=8, decoder=TorchDecoder("cpu"))])
        before = http.ranged_gets()
        got = [t for t, _ in b.tiles(batch_size=8, decoder=TorchDecoder("cpu"))]
        # one per batch, plus the tile the GPU decoder is checked on (slide.decode_check)
        assert http.ranged_gets() - before <= len(got) + 1 and len(got) == 3
    assert torch.equal(torch.cat(got), want)


def test_block_file_readinto_fills_numpy_buffers_by_bytes(slides):
    """tifffile reads some tags into numpy arrays (NDPI's MCU starts): `readinto` must fill the
    buffer's bytes, not len(array) items (an NDPI URL failed to open)."""
    from conftest import NDPI

    server = RangeHTTPServer({"n.ndpi": NDPI.read_bytes()})
    try:
        from slideflow.remote.source import RemoteSource

        fh = RemoteSource(f"{server.url}/n.ndpi").open()
        buf = np.zeros(608, dtype=np.uint32)
        fh.seek(1000)
        assert fh.readinto(buf) == buf.nbytes
        assert buf.tobytes() == NDPI.read_bytes()[1000:1000 + buf.nbytes]
        with sf.WSI(f"{server.url}/n.ndpi", **TILE) as remote, sf.WSI(NDPI, **TILE) as local:
            assert remote.dimensions == local.dimensions
            np.testing.assert_array_equal(_tiles(remote), _tiles(local))
    finally:
        server.close()


def test_mrxs_is_cached_with_its_companion_folder(s3, tmp_path, monkeypatch):
    """An MRXS slide is `x.mrxs` plus the folder `x/` beside it: both are downloaded into one
    cache entry, side by side, and the reader opens the local .mrxs (a stand-in for openslide
    checks the layout it needs); a changed companion object is downloaded again."""
    from types import SimpleNamespace

    import slideflow.slide.remote_open as ro

    parts = {"x.mrxs": b"[GENERAL]\n", "x/Slidedat.ini": b"[HIERARCHICAL]\n",
             "x/Data0000.dat": bytes(range(256)) * 64}
    for rel, data in parts.items():
        s3.put("mrxs", f"cohort/{rel}", data)
    opened = []

    def fake_openslide(path, backend):
        opened.append({rel: (path.parent / rel).read_bytes() for rel in parts})
        return SimpleNamespace(path=path)

    monkeypatch.setattr(ro, "open_local", fake_openslide)
    cache = SlideCache(tmp_path / "c")
    reader = ro.open_url("s3://mrxs/cohort/x.mrxs", cache=cache)
    assert reader.path.name == "x.mrxs" and opened == [parts]
    gets = s3.ranged_gets()
    ro.open_url("s3://mrxs/cohort/x.mrxs", cache=cache)  # current: no download
    assert s3.ranged_gets() == gets and len(opened) == 2
    s3.put("mrxs", "cohort/x/Data0000.dat", b"new data")
    ro.open_url("s3://mrxs/cohort/x.mrxs", cache=cache)
    assert opened[-1]["x/Data0000.dat"] == b"new data"
    assert len(cache.entries()) == 1
    s3.put("mrxs", "lonely/y.mrxs", b"[GENERAL]\n")
    with pytest.raises(SlideNotFoundError, match="companion folder s3://mrxs/lonely/y/"):
        ro.open_url("s3://mrxs/lonely/y.mrxs", cache=cache)


class _Spans:
    """A remote byte source over `data` that records each read_spans call (one GET each)."""

    remote = True
    concurrency = 2

    def __init__(self, data: bytes, fail_at: int | None = None):
        self.data, self.fail_at, self.calls = data, fail_at, []

    def read_spans(self, spans):
        self.calls.append(list(spans))
        if self.fail_at is not None and any(a <= self.fail_at < b for a, b in spans):
            raise OSError("range failed")
        return [memoryview(self.data)[a:b] for a, b in spans]

    def close(self):
        pass


def test_prefetch_delivers_each_merged_range_as_it_arrives():
    """A batch's tiles in two ranges far apart: two requests, and `ready` names each range's
    tiles separately (their decodes start without waiting for the other); later reads are
    served from memory; a failed range raises and leaves the other range's tiles delivered."""
    from slideflow.remote.source import MERGE_GAP
    from slideflow.slide.stored import StoredLevel

    far = 2 * MERGE_GAP
    offsets = np.array([0, 10, far, far + 10], np.int64)
    counts = np.array([10, 10, 10, 10], np.int64)
    data = bytes(range(256)) * (far // 256 + 1)
    src = _Spans(data)
    lay = StoredLevel("x.tif", 4, 1, 1, 1, offsets, counts, src=src)
    got = []
    lay.prefetch([3, 0, 2, 1], got.append)
    assert sorted(map(sorted, got)) == [[0, 1], [2, 3]] and len(src.calls) == 2
    assert lay.read([0, 1, 2, 3]) == {k: data[o:o + 10] for k, o in enumerate(offsets)}
    assert len(src.calls) == 2  # all from memory

    bad = _Spans(data, fail_at=far)
    lay = StoredLevel("x.tif", 4, 1, 1, 1, offsets, counts, src=bad)
    got = []
    with pytest.raises(OSError, match="range failed"):
        lay.prefetch([0, 1, 2, 3], got.append)
    assert got == [[0, 1]]
