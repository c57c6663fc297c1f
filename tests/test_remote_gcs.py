"""gs:// URLs through gcsfs against a server on 127.0.0.1 that speaks the routes of Google
Cloud Storage's JSON API gcsfs reads with (tests/remote_servers.GCSServer, reached through
STORAGE_EMULATOR_HOST): a prefix is listed, tiles equal the local file's and each batch costs
a bounded number of ranged GETs. Runs where gcsfs is installed (`slideflow[gcs]`)."""

from __future__ import annotations

import numpy as np
import pytest

import slideflow as sf
from slideflow.slide.remote_list import find_remote_slides

from conftest import CMU
from remote_servers import GCSServer

TILE = dict(tile_px=64, tile_um=64)


@pytest.fixture()
def gcs(slides, monkeypatch):
    # gcsfs's zonal-bucket probe talks gRPC to the real service: off for a local server
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    pytest.importorskip("gcsfs")
    server = GCSServer({f"bkt/cohort/{CMU.name}": CMU.read_bytes(),
                        "bkt/cohort/notes.txt": b"not a slide"})
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("SLIDEFLOW_ANON", "1")  # the local server takes no credentials
    yield server
    server.close()


def test_gs_prefix_listed_and_tiles_match_local(gcs):
    assert find_remote_slides("gs://bkt/cohort/") == [f"gs://bkt/cohort/{CMU.name}"]
    with sf.WSI(CMU, **TILE) as w:
        local = [t for t, _ in w.tiles(batch_size=16)]
    before = gcs.ranged_gets()
    with sf.WSI(f"gs://bkt/cohort/{CMU.name}", **TILE) as w:
        assert w.read_path == "stored"  # read in place, not downloaded
        meta = gcs.ranged_gets() - before
        remote = [t for t, _ in w.tiles(batch_size=16)]
    assert len(remote) == len(local)
    for a, b in zip(remote, local):
        np.testing.assert_array_equal(a, b)
    tiles_gets = gcs.ranged_gets() - before - meta
    assert meta <= 8, gcs.log  # IFDs, tile offsets, JPEG tables: a few blocks
    assert tiles_gets <= len(remote), gcs.log  # merged spans: one GET per batch here
