"""cuCIM backend vs what it would replace: tiles/s of `wsi.tiles()` per reader, as ratios.

- JPEG 2000 Aperio SVS (the TCGA test slide; the stored-tile reader cannot read it): openslide
  `read_region` (today's path) vs cuCIM.
- JPEG pyramid (`synthetic.make_pyramid`, 10,000 px): cuCIM vs the stored-tile reader (today's
  default) vs openslide `read_region`.

Each at 224 px / 112 um and at the as-is level-0 tile size (256 px), 1 and 2 reader threads,
no QC. The configurations are timed in interleaved rounds (one pass each per round) and the
medians compared, so that a noisy machine moves every reader alike. cuCIM runs with its
default (no) tile cache, then (second phase, every reader re-timed beside it) with a
per-process cache: cuCIM's cache is process-global.

    python bench/bench_cucim.py [--rounds 5] [--size 10000] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import slideflow as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import make_pyramid  # noqa: E402

SLIDES = Path(os.environ.get(
    "SLIDEFLOW_TEST_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
J2K = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
#: the TCGA slide records no MPP; 0.25 um/px puts 224 px / 112 um on level 1 (downsample 2.0005)
J2K_MPP = 0.25
#: (label, WSI keyword arguments) of each reader
READERS = {
    "openslide": {"backend": "openslide", "tile_reader": "region"},
    "stored": {"backend": "openslide", "tile_reader": "stored"},
    "cucim": {"backend": "cucim"},
}


def hardware() -> str:
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores"


def one_pass(wsi: sf.WSI, threads: int, min_s: float = 0.5) -> float:
    """Tiles/s of full `wsi.tiles()` passes, repeated for at least `min_s` (small slides)."""
    n, t0 = 0, time.perf_counter()
    while True:
        n += sum(len(batch) for batch, _ in wsi.tiles(batch_size=64, num_threads=threads))
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return n / elapsed


def run_cases(cases: dict[tuple, sf.WSI], threads: list[int], rounds: int
              ) -> dict[tuple, float]:
    """Median tiles/s per (case, threads), passes interleaved round by round."""
    for wsi in cases.values():  # warm the page cache and each library's first-open costs
        one_pass(wsi, max(threads))
    rates: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for t in threads:
            for key, wsi in cases.items():
                rates.setdefault((*key, t), []).append(one_pass(wsi, t))
    return {k: statistics.median(v) for k, v in rates.items()}


def build_cases(pyramid: Path) -> dict[tuple, sf.WSI]:
    geoms = {"224 px / 112 um": (224, 112), "256 px as-is level 0": (256, None)}
    cases: dict[tuple, sf.WSI] = {}
    for slide, mpp, readers in ((J2K, J2K_MPP, ("openslide", "cucim")),
                                (pyramid, None, ("openslide", "stored", "cucim"))):
        for geom, (px, um) in geoms.items():
            for reader in readers:
                wsi = sf.WSI(slide, px, um or px * (mpp or 0.499), mpp=mpp, **READERS[reader])
                cases[(slide.name, geom, reader)] = wsi
    return cases


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000, help="side of the JPEG pyramid")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir()))
    pyramid = make_pyramid(cache / f"sf_bench_{args.size}.tif", args.size, args.size)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    # phase 1: cuCIM as installed (no tile cache); phase 2: a per-process cuCIM cache. The
    # cache is process-global, so phase 2 comes second and re-times every reader beside it.
    cases = build_cases(pyramid)
    med = {(*k[:2], k[2], "", k[3]): v for k, v in run_cases(cases, args.threads,
                                                              args.rounds).items()}
    from cucim import CuImage

    CuImage.cache("per_process", memory_capacity=256, record_stat=False)
    med.update({(*k[:2], k[2], "+cache", k[3]): v for k, v in
                run_cases(build_cases(pyramid), args.threads, args.rounds).items()})
    load1 = os.getloadavg()[0]

    print(f"\n{hardware()}; load average {load0:.1f} at start, {load1:.1f} at end; "
          f"{args.rounds} interleaved rounds per phase, medians; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| slide | tiles | threads | reader | tiles/s | × openslide | × stored |")
    print("|---|---|---|---|---|---|---|")
    order = {name: i for i, name in enumerate(READERS)}
    rows = sorted(med.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][4], kv[0][3],
                                               order[kv[0][2]]))
    for (slide, geom, reader, phase, t), rate in rows:
        if phase and reader != "cucim":
            continue  # phase-2 openslide/stored rows only serve as the cached row's reference
        osl = med[(slide, geom, "openslide", phase, t)]
        sto = med.get((slide, geom, "stored", phase, t))
        n = len(cases[(slide, geom, "openslide")])
        label = "cuCIM, per-process cache (256 MB)" if phase else reader
        print(f"| {slide} | {geom} ({n}) | {t} | {label} | {rate:,.0f} | "
              f"{rate / osl:.2f} | {f'{rate / sto:.2f}' if sto else '—'} |")

if __name__ == "__main__":
    main()
