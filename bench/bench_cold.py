"""Cold one-slide run, ours against Slideflow 3.0.2, alternating fresh processes.

The job (issue 9): a fresh interpreter imports the package, opens CMU-1-Small-Region, runs Otsu
QC, builds ResNet50 from a local checkpoint and extracts features of every kept tile at
224 px / 112 um on the CPU. Each run is timed from outside (process wall time, interpreter
start included) and reports its phases from inside.

    .venv/bin/python bench/bench_cold.py                          # ours only
    .venv/bin/python bench/bench_cold.py --sf3-python /path/to/venv/bin/python --rounds 5

Slideflow 3 is not a dependency: install it in a throwaway venv (`pip download --no-deps
slideflow==3.0.2`, then the wheel with --no-deps plus the libraries its import needs; the same
torch as ours). It builds ResNet50 through torchvision's `weights='DEFAULT'`, which reads
`$TORCH_HOME/hub/checkpoints/resnet50-11ad3fa6.pth` when present: this script writes the same
random-weight state dict there and as our local `.pth`, so neither side downloads anything.
Runs alternate (ours, theirs, ours, ...) so a load change hits both; the summary gives medians
and the per-round ratio.

Slideflow 3's torch extractors default to `mixed_precision=True`, which on the CPU means bf16
autocast: fast on CPUs with AVX512-BF16/AMX, emulated (many times slower) elsewhere. The
like-for-like comparison is fp32 against fp32 (`ext.mixed_precision = False`, the ratio this
script reports); `--sf3-default` adds their default as a third side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OURS = """
import json, time
t0 = time.perf_counter()
import slideflow as sf
t1 = time.perf_counter()
wsi = sf.WSI({slide!r}, 224, 112).qc("otsu")
t2 = time.perf_counter()
ext = sf.build_feature_extractor("resnet50_imagenet", weights={ckpt!r})
t3 = time.perf_counter()
grid = ext(wsi)
t4 = time.perf_counter()
print(json.dumps({{"tiles": int(grid.rows.shape[0]), "import": t1 - t0, "open_qc": t2 - t1,
                  "build": t3 - t2, "extract": t4 - t3}}))
"""

# Slideflow 3.0.2's documented spelling of the same job (torch backend, CPU)
THEIRS = """
import json, time
t0 = time.perf_counter()
import slideflow as sf
t1 = time.perf_counter()
wsi = sf.WSI({slide!r}, tile_px=224, tile_um=112)
wsi.qc("otsu")
t2 = time.perf_counter()
ext = sf.build_feature_extractor("resnet50_imagenet", tile_px=224, device="cpu")
ext.mixed_precision = {mixed!r}
t3 = time.perf_counter()
feats = ext(wsi)
t4 = time.perf_counter()
import numpy as np
kept = int((~np.ma.getmaskarray(feats)[..., 0]).sum()) if np.ma.isMaskedArray(feats) else -1
print(json.dumps({{"tiles": kept, "grid": list(feats.shape), "import": t1 - t0,
                  "open_qc": t2 - t1, "build": t3 - t2, "extract": t4 - t3}}))
"""

PHASES = ("import", "open_qc", "build", "extract")
SF3 = "slideflow 3.0.2"


def checkpoint(folder: Path) -> tuple[Path, Path]:
    """A random-weight ResNet50 (torchvision layout) as our .pth and as torchvision's cache."""
    import torch

    from slideflow.model.extractors.families.resnet import resnet

    ours = folder / "resnet50_random_tv.pth"
    hub = folder / "torch_home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    if not (ours.exists() and hub.exists()):
        torch.manual_seed(0)
        state = resnet("resnet50").state_dict()
        hub.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, ours)
        torch.save(state, hub)
    return ours, hub.parents[2]


def run(python: str, code: str, env: dict[str, str], cwd: Path) -> dict:
    """One fresh process; cwd outside the checkout so each side imports its own slideflow."""
    t = time.perf_counter()
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{python} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def main(argv: list[str] | None = None) -> None:
    from synthetic import CMU

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sf3-python", default=None,
                    help="interpreter of a venv with slideflow==3.0.2 installed")
    ap.add_argument("--sf3-default", action="store_true",
                    help="also time Slideflow 3 with its default mixed precision (bf16 on CPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slide", default=str(CMU))
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir())) / "sf_cold"
    cache.mkdir(parents=True, exist_ok=True)
    ckpt, torch_home = checkpoint(cache)
    env = {**os.environ, "TORCH_HOME": str(torch_home), "CUDA_VISIBLE_DEVICES": "",
           "SF_BACKEND": "torch", "SF_SLIDE_BACKEND": "libvips", "HF_HUB_OFFLINE": "1"}
    sides = {"ours": (sys.executable, OURS.format(slide=args.slide, ckpt=str(ckpt)))}
    if args.sf3_python:
        sides[f"{SF3} fp32"] = (args.sf3_python, THEIRS.format(slide=args.slide, mixed=False))
        if args.sf3_default:
            sides[f"{SF3}, default mixed precision"] = (
                args.sf3_python, THEIRS.format(slide=args.slide, mixed=True))
    results: dict[str, list[dict]] = {k: [] for k in sides}
    print(f"# {time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPUs | load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} | {Path(args.slide).name}")
    print("| round | side | tiles | wall s | " + " | ".join(PHASES) + " |")
    print("|---|---|---|---|" + "---|" * len(PHASES))
    for r in range(args.rounds):
        for side, (python, code) in sides.items():
            res = run(python, code, env, cache)
            results[side].append(res)
            print(f"| {r + 1} | {side} | {res['tiles']} | {res['wall']:.2f} | "
                  + " | ".join(f"{res[p]:.2f}" for p in PHASES) + " |", flush=True)
    print()
    for side, rs in results.items():
        med = {p: statistics.median(x[p] for x in rs) for p in (*PHASES, "wall")}
        print(f"{side}: median wall {med['wall']:.2f} s ("
              + ", ".join(f"{p} {med[p]:.2f}" for p in PHASES) + ")")
    if args.sf3_python:
        for side in [k for k in results if k != "ours"]:
            ratios = [a["wall"] / b["wall"] for a, b in zip(results["ours"], results[side])]
            print(f"ours / {side} wall, per round: " + ", ".join(f"{x:.2f}" for x in ratios)
                  + f"; median {statistics.median(ratios):.2f}")
    print(f"# load {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
