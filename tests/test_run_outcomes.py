"""One per-slide outcome type and one run summary for tile extraction, feature bags and slide
embeddings: the Python API writes summary.json and failures.csv as the CLI does, and one bad
slide is one failure row in both."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import slideflow as sf
from slideflow.cli import app
from slideflow.engine import bag_runner
from slideflow.engine.extract import SlideResult
from slideflow.engine.outcome import SlideOutcome, Status
from slideflow.features import generate_bags, jobs_from_paths

from conftest import CMU

PX, UM = 64, 512


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "failures.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _broken(tmp_path: Path) -> Path:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(CMU.read_bytes()[:20000])  # a truncated copy
    return bad


def test_one_outcome_type_under_its_old_names():
    assert SlideResult is SlideOutcome and bag_runner.SlideOutcome is SlideOutcome
    o = SlideOutcome("A", "busy", reason="locked by host:1")
    assert o.status is Status.BUSY and o.status == "busy" and str(o.status) == "busy"
    assert o.fail("OSError", "disk full").message == "OSError: disk full"
    assert o.as_dict()["status"] == "failed" and o.as_dict()["error"] == "OSError: disk full"
    with pytest.raises(ValueError):
        SlideOutcome("A", "skipped")  # not a status: 'reused' or 'busy'


def test_bags_api_and_cli_write_the_same_failure_row(tmp_path, slides):
    bad = _broken(tmp_path)
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64,
                                     batch_size=16)
    api = tmp_path / "api"
    report = generate_bags(jobs_from_paths([CMU, bad]), ext, api, PX, UM, progress=False)
    assert list(report.done) == ["CMU-1-Small-Region"] and list(report.failed) == ["broken"]
    assert report.errors == []
    rows = _rows(api)
    assert [r["slide"] for r in rows] == ["broken"] and rows[0]["error_type"]
    summary = json.loads((api / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["failed_slides"]) == (1, 1, ["broken"])
    assert summary["tiles"] == report.tiles > 0 and summary["extractors"] == [ext.name]

    weights = tmp_path / "r18.pth"
    import torch

    torch.save(ext.model.state_dict(), weights)
    cli = tmp_path / "cli"
    res = CliRunner().invoke(app, ["features", str(CMU), str(bad), "-o", str(cli), "-e",
                                   "resnet18_imagenet", "--weights", str(weights), "--tile-px",
                                   str(PX), "--tile-um", str(UM), "--qc", "none", "-q"])
    assert res.exit_code == 1, res.output
    cli_rows = _rows(cli)
    assert [(r["slide"], r["error_type"]) for r in cli_rows] == [
        (r["slide"], r["error_type"]) for r in rows]
    assert json.loads((cli / "summary.json").read_text())["failed_slides"] == ["broken"]


def test_extraction_api_writes_summary_and_failures(tmp_path, slides):
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / CMU.name).symlink_to(CMU)
    _broken(folder)
    P = sf.create_project(tmp_path / "p", slides=folder)
    ds = P.dataset(PX, UM)
    s = ds.extract_tiles(qc=None, progress=False)
    assert s.done == ["CMU-1-Small-Region"] and list(s.failed) == ["broken"]
    out = ds.tfrecords_folder
    rows = _rows(out)
    assert [r["slide"] for r in rows] == ["broken"] and rows[0]["error_type"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["tiles"]) == (1, 1, s.tiles)
    again = ds.extract_tiles(qc=None, progress=False)
    assert again["CMU-1-Small-Region"].status == Status.REUSED
    assert json.loads((out / "summary.json").read_text())["reused"] == 1


def test_slide_embeddings_api_writes_summary(tmp_path, slides):
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64,
                                     batch_size=16)
    bags = tmp_path / "bags"
    generate_bags(jobs_from_paths([CMU]), ext, bags, PX, UM, progress=False)
    out = tmp_path / "emb"
    report = sf.generate_slide_embeddings(bags, "mean", out)
    assert report.done == ["CMU-1-Small-Region"] and not report.failed
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["encoder"]) == (1, 0, "mean")
    assert _rows(out) == []
    again = sf.generate_slide_embeddings(bags, "mean", out)
    assert again.skipped == ["CMU-1-Small-Region"]
    assert json.loads((out / "summary.json").read_text())["reused"] == 1


class _Means:
    """Features = per-channel means; records the batch sizes it was given."""

    name, num_features, batch_size = "means", 3, 5

    def __init__(self):
        import torch

        self.device, self.seen = torch.device("cpu"), []

    def preprocess(self, x):
        self.seen.append(len(x))
        return x.float()

    def forward_preprocessed(self, x):
        return x.mean(dim=(2, 3))


def test_batch_size_is_an_argument_never_written_on_the_extractor():
    import numpy as np

    from slideflow.engine.pipeline import RowCollector, run_many
    from slideflow.engine.protocols import Extractor

    tiles = np.random.default_rng(0).integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
    source = [(tiles[:6], np.zeros((6, 2), np.int64)), (tiles[6:], np.zeros((7, 2), np.int64))]
    a, b = _Means(), _Means()
    assert isinstance(a, Extractor)
    sinks = [RowCollector(3), RowCollector(3)]
    assert run_many(iter(source), [a, b], sinks, batch_sizes=[4, None]).tiles == 13
    assert a.seen == [4, 4, 4, 1] and b.seen == [5, 5, 3]  # None: the extractor's own
    assert (a.batch_size, b.batch_size) == (5, 5)
    np.testing.assert_allclose(sinks[0].result()[0], tiles.mean(axis=(1, 2)), rtol=1e-6)


def test_legacy_fanout_path_forwards_to_run_many():
    """`slideflow.fanout.run_features_many` (old path, extractors first) is `run_many`'s count
    with the same re-chunking; the engine itself calls `run_many`."""
    from slideflow.engine.pipeline import RowCollector
    from slideflow.fanout import run_features_many

    tiles = np.random.default_rng(1).integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    source = [(tiles[:4], np.zeros((4, 2), np.int64)), (tiles[4:], np.zeros((5, 2), np.int64))]
    a, b = _Means(), _Means()
    sinks = [RowCollector(3), RowCollector(3)]
    assert run_features_many([a, b], iter(source), sinks, batch_sizes=[2, None]) == 9
    assert a.seen == [2, 2, 2, 2, 1] and b.seen == [5, 4]
    for sink in sinks:
        np.testing.assert_allclose(sink.result()[0], tiles.mean(axis=(1, 2)), rtol=1e-6)


def test_generate_feature_bags_leaves_the_callers_extractor_alone(tmp_path, slides):
    from slideflow.features import generate_feature_bags

    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64,
                                     batch_size=16)
    out = tmp_path / "bags"
    r = generate_feature_bags(jobs_from_paths([CMU]), ext, out, PX, UM, batch_size=7,
                              qc=None, progress=False)
    assert list(r.done) == ["CMU-1-Small-Region"] and ext.batch_size == 16
    ref = generate_bags(jobs_from_paths([CMU]), ext, tmp_path / "ref", PX, UM, progress=False)
    assert list(ref.done) == ["CMU-1-Small-Region"]
    a = sf.io.read_bag(out / "CMU-1-Small-Region.pt").features
    b = sf.io.read_bag(tmp_path / "ref" / "CMU-1-Small-Region.pt").features
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_generate_and_save_writes_summary_and_failures(tmp_path):
    """Slideflow's `SlideEncoder.generate_and_save` (the engine's `embed_bag_folder`) leaves
    the run files the other entry points leave: one row per failed slide, counts, encoder."""
    from slideflow.io.bags import write_bag

    rng = np.random.default_rng(3)
    bags = tmp_path / "bags"
    coords = np.stack([np.arange(6) * 448, np.zeros(6)], axis=1).astype(np.int64)
    write_bag(bags / "good.pt", rng.standard_normal((6, 4)).astype(np.float32), coords,
              patch_size_level0=448)
    write_bag(bags / "empty.pt", np.zeros((0, 4), np.float32), np.zeros((0, 2), np.int64),
              patch_size_level0=448)
    out = tmp_path / "emb"
    report = sf.build_slide_encoder("mean").generate_and_save(str(bags), out)
    assert report.done == ["good"] and list(report.failed) == ["empty"] and report.errors == []
    assert [(r["slide"], r["error_type"]) for r in _rows(out)] == [("empty", "BagError")]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["failed_slides"], summary["encoder"],
            summary["outdir"]) == (1, 1, ["empty"], "mean", str(out))
    again = sf.build_slide_encoder("mean").generate_and_save(str(bags), out)
    assert again.skipped == ["good"] and list(again.failed) == ["empty"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["reused"], summary["failed"]) == (1, 1)
