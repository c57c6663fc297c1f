"""Slide layer benchmark: open + grid + QC time, and tile-read throughput (tiles/s).

Run: .venv/bin/python bench/bench_slide.py [--large 12000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import slideflow as sf

from synthetic import CMU, make_pyramid


def bench(path: Path, tile_px: int, tile_um: float, threads: int) -> dict:
    t0 = time.perf_counter()
    wsi = sf.WSI(path, tile_px, tile_um)
    t1 = time.perf_counter()
    wsi.qc("otsu")
    t2 = time.perf_counter()
    n = sum(len(b) for b, _ in wsi.tiles(batch_size=64, num_threads=threads))
    t3 = time.perf_counter()
    return {"slide": path.name, "tile": f"{tile_px}px/{tile_um}um", "threads": threads,
            "open_s": t1 - t0, "qc_s": t2 - t1, "tiles": n, "read_s": t3 - t2,
            "tiles_per_s": n / (t3 - t2) if n else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", type=int, default=12000, help="side of the synthetic pyramid")
    args = ap.parse_args()
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir()))
    big = make_pyramid(cache / f"sf_bench_{args.large}.tif", args.large, args.large)
    rows = []
    for path, px, um in ((CMU, 224, 112), (CMU, 256, 128), (big, 224, 112), (big, 256, 512)):
        for threads in (1, 2):
            rows.append(bench(path, px, um, threads))
    print(f"cores={os.cpu_count()}")
    print(f"{'slide':28} {'tile':12} {'thr':>3} {'open s':>7} {'qc s':>6} {'tiles':>6} "
          f"{'read s':>7} {'tiles/s':>8}")
    for r in rows:
        print(f"{r['slide']:28} {r['tile']:12} {r['threads']:>3} {r['open_s']:7.3f} "
              f"{r['qc_s']:6.3f} {r['tiles']:6d} {r['read_s']:7.2f} {r['tiles_per_s']:8.0f}")


if __name__ == "__main__":
    main()
