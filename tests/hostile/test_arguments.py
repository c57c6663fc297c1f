"""Every argument is checked where it enters, with one clear error (never a hang or a
traceback from deep inside, never blamed on the slide)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import slideflow as sf
from slideflow.errors import InvalidArgumentError, UnsafeConfigError

from .cases import hostile, hostile_params
from conftest import CMU

GEOMETRY = hostile_params([
    ("tile-px-zero", "tile_px=0", "InvalidArgumentError 'tile_px must be an integer >= 1'",
     {"tile_px": 0}),
    ("tile-px-negative", "tile_px=-256", "InvalidArgumentError before the slide is opened",
     {"tile_px": -256}),
    ("tile-px-fraction", "tile_px=224.5", "InvalidArgumentError (no silent truncation)",
     {"tile_px": 224.5}),
    ("tile-um-inf", "tile_um=inf", "InvalidArgumentError (was OverflowError)",
     {"tile_um": float("inf")}),
    ("tile-um-nan", "tile_um=nan", "InvalidArgumentError (was accepted)",
     {"tile_um": float("nan")}),
    ("tile-um-zero", "tile_um=0 / negative", "InvalidArgumentError", {"tile_um": -5}),
    ("tile-um-0x", "tile_um='0x'", "InvalidArgumentError naming the magnification",
     {"tile_um": "0x"}),
    ("tile-um-garbage", "tile_um='abc'", "InvalidArgumentError: microns or '20x'",
     {"tile_um": "abc"}),
    ("stride-div-zero", "stride_div=0", "InvalidArgumentError", {"stride_div": 0}),
])


@pytest.mark.parametrize("bad", GEOMETRY)
def test_geometry_is_checked_before_anything_is_opened(bad, tmp_path):
    args = {"tile_px": 256, "tile_um": 128, "stride_div": 1, **bad}
    key = next(iter(bad))
    # a path that does not exist: the argument error comes first, not 'slide not found'
    with pytest.raises(InvalidArgumentError, match=key.split("_")[0]):
        sf.WSI(tmp_path / "missing.svs", args["tile_px"], args["tile_um"], args["stride_div"])
    if key != "stride_div":
        with pytest.raises(InvalidArgumentError):
            sf.slide.geometry.check_tile_geometry(args["tile_px"], args["tile_um"])


SELECTION = hostile_params([
    ("qc-threshold-out-of-range", "qc_threshold=1.5", "InvalidArgumentError",
     {"qc_threshold": 1.5}),
    ("whitespace-fraction-negative", "whitespace_fraction=-0.1", "InvalidArgumentError",
     {"whitespace_fraction": -0.1}),
    ("roi-filter-method-zero", "roi_filter_method=0", "InvalidArgumentError",
     {"roi_filter_method": 0}),
    ("qc-unknown", "qc='otsu2'", "InvalidArgumentError listing the methods", {"qc": "otsu2"}),
])


@pytest.mark.parametrize("bad", SELECTION)
def test_tile_selection_options(bad):
    from slideflow.selection import TileSelection

    with pytest.raises(InvalidArgumentError, match=next(iter(bad)).split("_")[0]):
        TileSelection(**bad)


def _returns_within(fn, seconds: float = 20.0):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} still running after {seconds} s (hang)"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@hostile("batch-size-zero", "batch_size=0 (extractor, WSI.tiles, generate_feature_bags)",
         "InvalidArgumentError at once (looped forever: 2.7 M empty batches in 10 s)")
def test_batch_size_zero_never_loops(tmp_path):
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        ext.batch_size = 0
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        sf.build_feature_extractor("resnet18_imagenet", pretrained=False, batch_size=-1)
    wsi = sf.WSI(CMU, 256, 512)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        _returns_within(lambda: next(wsi.tiles(batch_size=0)))
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        _returns_within(lambda: ext.embed(np.zeros((2, 64, 64, 3), np.uint8), batch_size=0))
    from slideflow.pipeline import _rebatch

    with pytest.raises(InvalidArgumentError):
        _returns_within(lambda: next(_rebatch(iter([(np.zeros((1, 4, 4, 3)), None)]), 0)))


@hostile("bags-bad-geometry-once", "generate_bags(tile_px=0) over several slides",
         "one InvalidArgumentError for the call, not one 'read failure' per slide")
def test_generate_bags_rejects_geometry_once(tmp_path):
    from slideflow.features import generate_bags, jobs_from_paths

    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64)
    jobs = jobs_from_paths([CMU])
    with pytest.raises(InvalidArgumentError, match="tile_px"):
        generate_bags(jobs, ext, tmp_path / "out", 0, 128, progress=False)
    with pytest.raises(InvalidArgumentError, match="max_tiles"):
        generate_bags(jobs, ext, tmp_path / "out", 64, 128, max_tiles=0, progress=False)
    assert not (tmp_path / "out").exists()


@hostile("dataset-bad-geometry", "P.dataset(tile_px=0, tile_um='20x')", "InvalidArgumentError")
def test_dataset_geometry(tmp_path):
    P = sf.create_project(tmp_path / "p")
    with pytest.raises(InvalidArgumentError, match="tile_px"):
        P.dataset(tile_px=0, tile_um="20x")
    with pytest.raises(InvalidArgumentError, match="tile_um"):
        P.dataset(tile_px=256, tile_um=float("inf"))


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from slideflow.cli import main

    monkeypatch.setattr(sys, "argv", ["slideflow", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


CLI = hostile_params([
    ("cli-tile-px-zero", "slideflow features --tile-px 0", "exit 2, 'error: tile_px must be "
     "...', no traceback (was ZeroDivisionError)", ["--tile-px", "0"]),
    ("cli-tile-um-inf", "slideflow features --tile-um inf", "exit 2, clear error (was "
     "OverflowError)", ["--tile-um", "inf"]),
    ("cli-batch-size-zero", "slideflow features --batch-size 0", "exit 2, clear error (was "
     "silently the default)", ["--batch-size", "0"]),
])


@pytest.mark.parametrize("args", CLI)
def test_cli_arguments(args, monkeypatch, capsys, tmp_path):
    code, err = _cli(monkeypatch, capsys, "features", str(CMU), "-o", str(tmp_path / "o"),
                     "-e", "resnet18_imagenet", *args)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert args[0].lstrip("-").replace("-", "_") in err.replace("-", "_")
    assert not (tmp_path / "o").exists()


@hostile("rebuild-malformed-json", "rebuild_extractor on a bags_config.json cut in half",
         "UnsafeConfigError naming the file (was a bare JSONDecodeError)")
def test_rebuild_malformed_json(tmp_path):
    path = tmp_path / "bags_config.json"
    path.write_text('{"extractor": {"class": "slideflow.model.extractors')
    with pytest.raises(UnsafeConfigError, match="bags_config.json: not valid JSON"):
        sf.rebuild_extractor(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UnsafeConfigError, match=str(path)):
        sf.rebuild_extractor(tmp_path)
