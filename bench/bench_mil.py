"""MIL training throughput on synthetic bags: the data-loading share of an epoch.

Writes N synthetic .pt bags of T tiles x D features (the layout generate_feature_bags writes),
trains attention_mil for a few epochs on the CPU, and reports per epoch the training time, the
time spent assembling batches from the (memory-mapped) bags, and their ratio. Issue 25's target:
the model step is >= 90 % of the epoch's training time.

    .venv/bin/python bench/bench_mil.py                      # 500 bags of 5000 x 1024 (10 GB)
    .venv/bin/python bench/bench_mil.py --bags 60 --epochs 2 # a reduced run

The first epoch pages the bags in from disk (cold cache unless they were just written); later
epochs show the steady state.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_bags(folder: Path, n: int, tiles: int, dim: int, seed: int = 0) -> pd.DataFrame:
    from slideflow.io.bags import write_bag
    from slideflow.io.bags_config import write_bags_config

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    side = int(np.ceil(np.sqrt(tiles)))
    cells = np.arange(tiles)
    coords = np.stack([(cells % side) * 256, (cells // side) * 256], 1).astype(np.int64)
    rows = []
    for i in range(n):
        x = rng.standard_normal((tiles, dim), dtype=np.float32)
        if i % 2:
            x[:8, 0] += 3.0
        write_bag(folder / f"bag_{i:04d}.pt", x, coords, patch_size_level0=256)
        rows.append({"slide": f"bag_{i:04d}", "patient": f"bag_{i:04d}", "label": str(i % 2)})
    write_bags_config(folder, {"extractor": {"class": "bench", "kwargs": {}}, "normalizer": None,
                               "num_features": dim, "tile_px": 224, "tile_um": 112})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, default=500)
    ap.add_argument("--tiles", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--bag-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the bags")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args(argv)
    if min(args.bags, args.tiles, args.dim, args.epochs) < 1 or args.bags < 4:
        ap.error("--bags >= 4 and --tiles, --dim, --epochs >= 1")
    import torch

    import slideflow as sf

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="bench_mil-"))
    try:
        t0 = time.perf_counter()
        df = write_bags(work / "bags", args.bags, args.tiles, args.dim)
        written = time.perf_counter() - t0
        n_val = max(2, args.bags // 10)
        cfg = sf.mil.mil_config("attention_mil", epochs=args.epochs, lr=1e-4,
                                bag_size=args.bag_size, batch_size=args.batch_size)
        sf.mil.train_mil(cfg, df.iloc[n_val:], df.iloc[:n_val], "label", work / "bags",
                         outdir=work / "run", progress=False)
        hist = pd.read_csv(work / "run/history.csv")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hist["data_share"] = hist.data_seconds / hist.train_seconds
    print(f"{args.bags} bags of {args.tiles} x {args.dim} written in {written:.1f} s; "
          f"{args.bags - n_val} train / {n_val} val; torch threads {torch.get_num_threads()}")
    print(hist[["epoch", "train_seconds", "data_seconds", "data_share", "seconds"]]
          .to_string(index=False))
    steady = hist.iloc[1:] if len(hist) > 1 else hist
    share = float(steady.data_seconds.sum() / steady.train_seconds.sum())
    print(f"data-loading share of training (epochs {int(steady.epoch.iloc[0])}+): "
          f"{share:.1%}; model step {1 - share:.1%}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "history": hist.to_dict("records"),
                                         "data_share": share}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
