"""Several extractors over one read (`-e a,b`) against the extractors' model-only rates.

Model-only rate of each extractor: preprocessing + forward on uint8 tiles already in memory
(the engine's layout). The fan-out run reads the same number of tiles from a slide once and
feeds every extractor through `pipeline.run_many` (its own overlapped batch runner each). If
reading and hand-over cost nothing, N models on one device take the sum of their times, so the
bound is 1 / (1/a + 1/b + ...); the run is reported as a ratio to it. Rounds alternate
model-only and fan-out passes in one process; medians are reported.

Run: .venv/bin/python bench/bench_fanout.py [--tiles 96] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

MODELS = "efficientnet_lite0_imagenet,resnet50_imagenet"
SLIDE = Path(os.environ.get("SLIDEFLOW_TEST_SLIDES", Path(__file__).resolve().parents[2]
                            / "shared" / "data" / "slides")) / "CMU-1-Small-Region.svs"


def model_only(ext, tiles: np.ndarray) -> float:
    import torch

    x = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    t = time.perf_counter()
    for a in range(0, len(x), ext.batch_size):
        ext.forward_preprocessed(ext.preprocess(x[a:a + ext.batch_size]))
    return len(x) / (time.perf_counter() - t)


def fanout(exts, wsi, coords: np.ndarray) -> float:
    from slideflow.pipeline import RowCollector, run_many

    sinks = [RowCollector(e.num_features) for e in exts]
    t = time.perf_counter()
    stats = run_many(wsi.tiles(batch_size=exts[0].batch_size, coords=coords), exts, sinks)
    secs = time.perf_counter() - t
    assert all(s.n == len(coords) for s in sinks)
    return stats.tiles / secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--tiles", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import torch

    import slideflow as sf

    torch.set_num_threads(args.threads)
    exts = [sf.build_feature_extractor(m, device="cpu", batch_size=args.batch_size,
                                       mixed_precision="fp32",
                                       **({} if m == "efficientnet_lite0_imagenet" else
                                          {"pretrained": False}))
            for m in args.models.split(",")]
    wsi = sf.WSI(SLIDE, 224, 112)
    coords = np.resize(wsi.coords, (args.tiles, 2))  # repeats CMU-1's tiles to --tiles
    tiles = np.concatenate([t for t, _ in wsi.tiles(batch_size=64, coords=coords)])
    for e in exts:  # warm-up
        model_only(e, tiles[: args.batch_size])
    alone: dict[str, list[float]] = {e.name: [] for e in exts}
    both: list[float] = []
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for e in exts:
            alone[e.name].append(model_only(e, tiles))
        both.append(fanout(exts, wsi, coords))
    rates = {k: statistics.median(v) for k, v in alone.items()}
    bound = 1 / sum(1 / r for r in rates.values())
    fan = statistics.median(both)
    for k, v in alone.items():
        print(f"{k:30s} model only {rates[k]:6.2f} tiles/s (rounds {[round(x, 2) for x in v]})")
    print(f"{'-e ' + args.models:30s} one read   {fan:6.2f} tiles/s (rounds "
          f"{[round(x, 2) for x in both]})")
    print(f"bound 1/(1/a+1/b) = {bound:.2f} tiles/s; fan-out / bound = {fan / bound:.2f}")
    print(f"{args.tiles} tiles of {SLIDE.name} at 224 px / 112 µm, batch {args.batch_size}, fp32, "
          f"{args.threads} threads, load average {load:.1f} -> {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
