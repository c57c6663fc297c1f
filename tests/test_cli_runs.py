"""The command line over cohorts: concurrent processes on one folder, kill -9 and rerun,
manifests with a bad slide, run files, several extractors in one pass."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import slideflow as sf
from slideflow.cli import app, ray_argv
from slideflow.io.atomic import TMP_MARK

from conftest import CMU, CMU_DICOM, CMU_TIFF, NDPI, TCGA_J2K

runner = CliRunner()
GEOMETRY = ["--tile-px", "112", "--tile-um", "224", "--qc", "none"]
RUN_FILES = ("failures.csv", "summary.json")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every file of a bag folder (recursively) but the per-run files, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in RUN_FILES}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if TMP_MARK in p.name or p.suffix == ".lock"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, slides) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    for p in (CMU, CMU_DICOM, NDPI):
        (folder / p.name).symlink_to(p)
    return folder


@pytest.fixture(scope="module")
def serial(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "bags"
    res = runner.invoke(app, ["features", str(cohort), "-o", str(out), *GEOMETRY])
    assert res.exit_code == 0, res.output
    assert "3 done, 0 reused, 0 failed" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 3 and summary["tiles"] == 24 + 24 + 16
    assert (out / "failures.csv").read_text() == "slide,error_type,message\n"
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "slideflow", "features", *args]


def test_three_concurrent_processes_do_each_slide_once(cohort, serial, tmp_path):
    out = tmp_path / "bags"
    procs = [subprocess.Popen(_cli(str(cohort), "-o", str(out), *GEOMETRY), env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    done = 0
    for stdout, _ in results:
        line = stdout.strip().splitlines()[-1]
        done += int(line.split(" done")[0])
    assert done == 3, [r[0] for r in results]  # each slide made by exactly one process
    assert _outputs(out) == _outputs(serial)
    assert _leftovers(out) == []


def test_kill_9_mid_slide_then_rerun_completes(cohort, serial, tmp_path):
    out = tmp_path / "bags"
    proc = subprocess.Popen(_cli(str(cohort), "-o", str(out), *GEOMETRY), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    locked: list[Path] = []
    while time.time() < deadline and not locked and proc.poll() is None:
        # a slide's lock, not the folder's short claim lock (bags_config.json.lock)
        locked = [p for p in out.glob("*.lock") if not p.name.startswith("bags_config")] \
            if out.exists() else []
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert locked and locked[0].exists()  # killed while holding a slide
    victim = locked[0].name[: -len(".lock")]
    assert not any(p.name.startswith(victim + ".pt") and TMP_MARK not in p.name
                   for p in out.iterdir())  # nothing of that slide looks finished
    res = runner.invoke(app, ["features", str(cohort), "-o", str(out), *GEOMETRY])
    assert res.exit_code == 0, res.output
    assert _outputs(out) == _outputs(serial)
    assert _leftovers(out) == []


def test_manifest_with_a_bad_slide(tmp_path, slides):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "sample_id,image_path,mask_path,spacing_at_level_0,patient_id\n"
        f"case-1,{CMU},,,p1\n"
        f"case-2,{CMU_TIFF},,0.499,p1\n"           # the file's own MPP is wrong: overridden
        f"case-3,{TCGA_J2K},,,p2\n"                # no MPP recorded: fails
        "case-4,missing/slide.svs,,,p3\n")          # relative to the manifest: not there
    out = tmp_path / "bags"
    res = runner.invoke(app, ["features", "--manifest", str(manifest), "-o", str(out),
                              *GEOMETRY])
    assert res.exit_code == 1, res.output
    assert "2 done, 0 reused, 2 failed" in res.output
    rows = list(csv.DictReader(open(out / "failures.csv")))
    assert [r["slide"] for r in rows] == ["case-3", "case-4"]
    assert rows[0]["error_type"] == "MissingMPPError" and "microns-per-pixel" in rows[0]["message"]
    assert str(tmp_path / "missing" / "slide.svs") in rows[1]["message"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_slides"] == ["case-3", "case-4"] and summary["tiles"] == 48
    assert sf.io.read_bag(out / "case-2.pt").features.shape == (24, 1280)
    assert sorted(p.name for p in out.glob("*.pt")) == ["case-1.pt", "case-2.pt"]


def test_manifest_errors_name_the_line(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("sample_id,image_path,spacing_at_level_0\na,x.svs,0.5\na,y.svs,abc\n")
    res = runner.invoke(app, ["features", "--manifest", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "line 3" in str(res.exception or res.output)
    missing = tmp_path / "n.csv"
    missing.write_text("slide_id,path\na,x.svs\n")
    res = runner.invoke(app, ["features", "--manifest", str(missing), "-o", str(tmp_path / "o")])
    assert "sample_id" in str(res.exception or res.output)


def test_two_extractors_in_one_pass_equal_two_runs(tmp_path, slides):
    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, seed=1)
    ckpt = tmp_path / "r18.pth"
    torch.save(ext.model.state_dict(), ckpt)
    both, one, two = tmp_path / "both", tmp_path / "one", tmp_path / "two"
    common = [str(CMU), *GEOMETRY, "--batch-size", "10"]
    res = runner.invoke(app, ["features", *common, "-o", str(both), "-e",
                              "efficientnet_lite0_imagenet,resnet18_imagenet",
                              "--weights", f"resnet18_imagenet={ckpt}"])
    assert res.exit_code == 0, res.output
    for name, out, extra in (("efficientnet_lite0_imagenet", one, []),
                             ("resnet18_imagenet", two, ["--weights", str(ckpt)])):
        res = runner.invoke(app, ["features", *common, "-o", str(out), "-e", name, *extra])
        assert res.exit_code == 0, res.output
        assert _outputs(both / name) == _outputs(out)
    assert sf.io.read_bag(both / "resnet18_imagenet" / "CMU-1-Small-Region.pt"
                          ).features.shape == (24, 512)


def test_locked_slide_is_skipped_not_failed(tmp_path, slides):
    from slideflow.io.locks import SlideLock

    out = tmp_path / "bags"
    with SlideLock(out, "CMU-1-Small-Region"):
        res = runner.invoke(app, ["features", str(CMU), "-o", str(out), *GEOMETRY])
    assert res.exit_code == 0, res.output
    assert "0 done, 0 reused, 1 held by other processes, 0 failed" in res.output
    assert not (out / "CMU-1-Small-Region.pt").exists()


def test_save_images_and_python_dash_m(tmp_path, slides):
    out = tmp_path / "bags"
    proc = subprocess.run(_cli(str(CMU), "-o", str(out), *GEOMETRY, "--save-images", "-q"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # --quiet
    pngs = sorted((out / "CMU-1-Small-Region.images").glob("*.png"))
    coords = sf.io.read_bag(out / "CMU-1-Small-Region.pt").coords
    assert len(pngs) == len(coords) == 24
    assert {p.stem for p in pngs} == {f"{x}_{y}" for x, y in coords.tolist()}


def test_ray_flag_without_address():
    assert ray_argv(["features", "x.svs", "--ray"]) == ["features", "x.svs", "--ray", ""]
    assert ray_argv(["features", "--ray", "-o", "o"])[2] == ""
    assert ray_argv(["features", "--ray", "auto", "x"])[2] == "auto"


def test_manifest_as_project_annotations(tmp_path, slides):
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / CMU_TIFF.name).symlink_to(CMU_TIFF)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("sample_id,image_path,spacing_at_level_0,patient_id\n"
                        f"CMU-1-Small-Region.jpeg,{CMU_TIFF},0.499,P1\n")
    P = sf.create_project(tmp_path / "p", annotations=manifest, slides=folder)
    ds = P.dataset(112, 224)
    assert ds.slides() == ["CMU-1-Small-Region.jpeg"]
    assert ds.annotation_mpp() == {"CMU-1-Small-Region.jpeg": 0.499}
    assert list(ds.annotations["patient"]) == ["P1"]


def test_manifest_mask_replaces_qc(tmp_path, slides):
    from PIL import Image

    w, h = sf.WSI(CMU, 112, 224).dimensions
    mask = tmp_path / "mask.png"
    arr = (255 * (np.arange(200)[None, :] < 100)).astype(np.uint8).repeat(267, axis=0)
    Image.fromarray(arr).save(mask)  # left half of the slide, at a thumbnail size
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"sample_id,image_path,mask_path\ncase,{CMU},{mask.name}\n")
    out = tmp_path / "bags"
    res = runner.invoke(app, ["features", "--manifest", str(manifest), "-o", str(out),
                              "--tile-px", "112", "--tile-um", "224"])
    assert res.exit_code == 0, res.output
    expected = sf.WSI(CMU, 112, 224).qc(str(mask)).coords
    assert 0 < len(expected) < 24
    np.testing.assert_array_equal(sf.io.read_bag(out / "case.pt").coords, expected)
