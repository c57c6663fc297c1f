"""DICOMweb slides (`dicomweb+http://host/path?study=...&series=...`) against a minimal
QIDO-RS/WADO-RS server on 127.0.0.1 serving the CMU-1 DICOM instances: the stored JPEG frames
go to slideflow's decoders, tiles equal the local folder's, one frame request for the first batch, then one per two batches."""

from __future__ import annotations

import numpy as np
import pytest

import slideflow as sf
from slideflow.errors import SlideflowError, SlideReadError
from slideflow.remote.dicomweb import parse_dicomweb

from conftest import CMU_DICOM
from remote_servers import DicomWebServer

TILE = dict(tile_px=64, tile_um=64)


@pytest.fixture(scope="module")
def server(slides):
    s = DicomWebServer(CMU_DICOM)
    yield s
    s.close()


@pytest.fixture(scope="module")
def local_tiles(slides):
    with sf.WSI(CMU_DICOM, **TILE) as w:
        return np.concatenate([t for t, _ in w.tiles(batch_size=16)])


def test_parse():
    assert parse_dicomweb("dicomweb://pacs.org/dicom-web/?study=1.2&series=3.4") == (
        "https://pacs.org/dicom-web", "1.2", "3.4")
    assert parse_dicomweb("dicomweb+http://127.0.0.1:8042/wado?series=9&study=8")[0] == \
        "http://127.0.0.1:8042/wado"
    with pytest.raises(SlideflowError, match="study=<StudyInstanceUID>"):
        parse_dicomweb("dicomweb://pacs.org/dicom-web?study=1.2")


def test_frames_decoded_by_slideflow_match_local(server, local_tiles):
    with sf.WSI(server.url(), **TILE) as w:
        assert w.read_path == "stored" and w._stored[1] == "dicomweb"
        assert w.name == server.series and w.backend == "dicom"
        before = server.frame_requests()
        batches = [t for t, _ in w.tiles(batch_size=16)]
        # one WADO-RS call for batch 0, then one per two batches (fetched together)
        assert server.frame_requests() - before == 1 + len(batches) // 2
        assert w.fetch_stats["requests"] >= 1 + len(batches) // 2
    assert np.array_equal(np.concatenate(batches), local_tiles)


def test_frame_request_503_is_retried(server, local_tiles, monkeypatch):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_BACKOFF", "0.01")
    with sf.WSI(server.url(), **TILE) as w:
        server.faults[:] = ["503", "503"]
        got = np.concatenate([t for t, _ in w.tiles(batch_size=16)])
        assert w.fetch_stats["retries"] == 2
    assert np.array_equal(got, local_tiles)


def test_persistent_failure_names_url_frames_attempts(server, monkeypatch):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_BACKOFF", "0.01")
    monkeypatch.setenv("SLIDEFLOW_REMOTE_RETRIES", "1")
    with sf.WSI(server.url(), **TILE) as w:
        assert w.read_path == "stored"
        server.faults[:] = ["503"] * 2
        with pytest.raises(SlideReadError) as err:
            list(w.tiles(batch_size=16))
    server.faults.clear()
    msg = str(err.value)
    assert "dicomweb+http://" in msg and "frames 1.." in msg and "after 2 attempts" in msg


def test_unknown_series_is_not_found(server):
    url = server.url().replace(f"series={server.series}", "series=1.2.3")
    with pytest.raises(SlideflowError, match="no instances"):
        sf.WSI(url, **TILE)


def test_bag_from_dicomweb_is_byte_identical(server, tmp_path):
    from typer.testing import CliRunner

    from slideflow.cli import app

    args = ["--tile-px", "112", "--tile-um", "224", "--qc", "none"]
    bags = {}
    for where, path in (("local", CMU_DICOM), ("web", server.url())):
        manifest = tmp_path / f"{where}.csv"
        manifest.write_text(f"sample_id,image_path\ncase-1,{path}\n")
        out = tmp_path / where
        res = CliRunner().invoke(app, ["features", "--manifest", str(manifest), "-o", str(out),
                                       *args])
        assert res.exit_code == 0, res.output
        bags[where] = (out / "case-1.pt").read_bytes()
    assert bags["local"] == bags["web"]
