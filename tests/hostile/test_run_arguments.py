"""Run-wide options are checked once where they enter (CLI and API), before any model is
built, instead of failing every slide the same way."""

from __future__ import annotations

import pytest

from slideflow.errors import InvalidArgumentError

from .cases import hostile, hostile_params
from .test_arguments import _cli
from conftest import CMU

OPTIONS = hostile_params([
    ("cli-workers-negative", "slideflow features --workers -1", "exit 2 'error: --workers "
     "must be ...' before the model is built (every slide failed)", ["--workers", "-1"]),
    ("cli-mpp-nan", "slideflow features --mpp nan", "exit 2 naming --mpp (every slide failed)",
     ["--mpp", "nan"]),
    ("cli-mpp-negative", "slideflow features --mpp -1", "exit 2 naming --mpp", ["--mpp", "-1"]),
    ("cli-mpp-1e-300", "slideflow features --mpp 1e-300", "exit 2: 'between 0.0001 and 10000 "
     "microns per pixel' (was OverflowError per slide)", ["--mpp", "1e-300"]),
    ("cli-device-missing", "slideflow features --device cuda:99", "exit 2 'device 'cuda:99': "
     "...' saying which devices exist (was a raw RuntimeError traceback)",
     ["--device", "cuda:99"]),
    ("cli-devices-missing", "slideflow features --devices 0,99 (no such GPUs)", "exit 2 naming "
     "the device (every worker failed every slide)", ["--devices", "0,99"]),
    ("cli-stride-div-huge", "slideflow features --stride-div 1000000000", "exit 2 'stride_div "
     "... larger than tile_px' (silently made 14 M tiles of a small slide)",
     ["--stride-div", "1000000000"]),
])


@pytest.mark.parametrize("args", OPTIONS)
def test_run_options_fail_once_before_the_model(args, monkeypatch, capsys, tmp_path):
    import slideflow.model

    built = []  # the CLI imports it from slideflow.model when the command runs
    monkeypatch.setattr(slideflow.model, "build_feature_extractor",
                        lambda *a, **k: built.append(a))
    code, err = _cli(monkeypatch, capsys, "features", str(CMU), "-o", str(tmp_path / "o"),
                     "-e", "resnet18_imagenet", *args)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    key = args[0].lstrip("-").replace("-", "_").replace("devices", "device")
    assert key in err.replace("-", "_"), err
    assert not built and not (tmp_path / "o").exists()


@hostile("api-devices-missing", "generate_bags(..., devices=['cuda:99'])",
         "InvalidArgumentError before any folder is claimed or model copied to workers")
def test_api_devices_checked_once(tmp_path):
    import slideflow as sf
    from slideflow.features import generate_bags, jobs_from_paths

    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=64)
    with pytest.raises(InvalidArgumentError, match="cuda:99"):
        generate_bags(jobs_from_paths([CMU]), ext, tmp_path / "o", 64, 128, devices=["cuda:99"],
                      progress=False)
    with pytest.raises(InvalidArgumentError, match="num_threads"):
        generate_bags(jobs_from_paths([CMU]), ext, tmp_path / "o", 64, 128, num_threads=-1,
                      progress=False)
    assert not (tmp_path / "o").exists()


@hostile("slurm-array-step", "a SLURM array --array=0-30:10 (task ids 0, 10, 20, 30; "
         "SLURM_ARRAY_TASK_STEP=10, COUNT=4)", "the four tasks take disjoint shards covering "
         "every slide once (3 of 4 tasks failed 'need 0 <= i < n')")
def test_slurm_step_arrays(monkeypatch):
    from slideflow.cli import shard

    items = list(range(10))
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "10")
    got = []
    for task in (0, 10, 20, 30):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        got.append(shard(items, None))
    assert sorted(x for part in got for x in part) == items and all(got)
