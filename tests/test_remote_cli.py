"""`slideflow features` over URLs: an S3 prefix and a manifest of https URLs give bags
byte-identical to a run over the local files; a bad object fails alone, with its requests and
bytes in failures.csv; a rerun reuses the bags (same ETag) without reading tiles."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from slideflow.cli import app

from conftest import CMU, TCGA_J2K

runner = CliRunner()
ARGS = ["--tile-px", "112", "--tile-um", "224", "--qc", "none", "--mpp", "0.5"]


@pytest.fixture(scope="module")
def local_bags(tmp_path_factory, slides):
    folder = tmp_path_factory.mktemp("local")
    for p in (CMU, TCGA_J2K):
        (folder / p.name).symlink_to(p)
    out = folder / "bags"
    res = runner.invoke(app, ["features", str(folder), "-o", str(out), *ARGS])
    assert res.exit_code == 0, res.output
    return out


def _pts(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.pt"))}


def test_s3_prefix_bags_match_local_and_bad_object_fails_alone(s3_slides, local_bags,
                                                               tmp_path, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="slideflow")
    monkeypatch.setenv("SLIDEFLOW_REMOTE_BACKOFF", "0.01")
    s3_slides.put("cli", "run/CMU-1-Small-Region.svs", CMU)
    s3_slides.put("cli", "run/tcga-cr-7395-01a-01-ts1.svs", TCGA_J2K)
    s3_slides.put("cli", "run/broken.svs", b"II*\0" + b"\0" * 4000)
    s3_slides.put("cli", "run/notes.txt", b"not a slide")
    out, cache = tmp_path / "bags", tmp_path / "cache"
    res = runner.invoke(app, ["features", "s3://cli/run/", "-o", str(out), "--cache", str(cache),
                              *ARGS])
    assert res.exit_code == 1, res.output
    assert "2 done, 0 reused, 1 failed" in res.output and "remote slide(s)" in res.output
    assert _pts(out) == _pts(local_bags) and len(_pts(out)) == 2
    rows = list(csv.DictReader(open(out / "failures.csv")))
    assert [r["slide"] for r in rows] == ["broken"]
    assert "s3://cli/run/broken.svs" in rows[0]["message"]
    assert int(rows[0]["requests"]) >= 1 and int(rows[0]["bytes_fetched"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    fetched = summary["fetched"]
    assert sorted(fetched) == ["CMU-1-Small-Region", "broken", "tcga-cr-7395-01a-01-ts1"]
    # the JPEG 2000 slide was downloaded once into --cache; the SVS was read in place
    assert fetched["tcga-cr-7395-01a-01-ts1"]["bytes_fetched"] >= TCGA_J2K.stat().st_size
    assert fetched["CMU-1-Small-Region"]["bytes_fetched"] < 2 * CMU.stat().st_size
    assert summary["requests"] == sum(f["requests"] for f in fetched.values())
    assert "CMU-1-Small-Region done (24 tiles, " in caplog.text  # progress: MB and requests
    assert " MB in " in caplog.text
    assert len(list(cache.glob("*.json"))) == 2  # the JPEG 2000 slide and the broken file

    before = s3_slides.ranged_gets()
    res = runner.invoke(app, ["features", "s3://cli/run/CMU-1-Small-Region.svs", "-o", str(out),
                              "--cache", str(cache), *ARGS])
    assert res.exit_code == 0 and "0 done, 1 reused" in res.output, res.output
    assert s3_slides.ranged_gets() == before  # same ETag: reused from a HEAD alone


def test_manifest_of_https_urls(http_slides, local_bags, tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("sample_id,image_path\n"
                        f"CMU-1-Small-Region,{http_slides.url}/cmu.svs\n")
    out = tmp_path / "bags"
    res = runner.invoke(app, ["features", "--manifest", str(manifest), "-o", str(out), *ARGS])
    assert res.exit_code == 0, res.output
    assert _pts(out)["CMU-1-Small-Region.pt"] == _pts(local_bags)["CMU-1-Small-Region.pt"]


def test_missing_prefix_is_one_error_line(s3_slides, tmp_path):
    res = runner.invoke(app, ["features", "s3://cli/nothing-here/", "-o", str(tmp_path / "o"),
                              *ARGS])
    assert res.exit_code != 0
