"""Feature extraction benchmark (issue 6): every figure is measured in this one run.

Cases, each in a fresh subprocess so peak RSS and cold-start costs are honest:
  model     model-only tiles/s on uint8 tensors already in memory (the ceiling)
  slide     end-to-end from the slide: open -> QC -> read -> model -> .pt bag written
  tfrecord  end-to-end from a TFRecord of the same tiles (PNG, so decode is lossless)
  cold      import + open + QC + build ResNet50 from a local file + extractor(wsi) on CMU-1
  import    `import slideflow` time

Run: .venv/bin/python bench/bench_features.py [--large 12000] [--models efficientnet_lite0_imagenet,resnet50_imagenet]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TILE_PX, TILE_UM = 224, 112


def _build(model: str, weights: str | None = None):
    import slideflow as sf

    if model == "efficientnet_lite0_imagenet" or weights:
        return sf.build_feature_extractor(model, **({"weights": weights} if weights else {}))
    return sf.build_feature_extractor(model, pretrained=False)


def case_model(model: str, n: int) -> dict:
    import numpy as np

    ext = _build(model)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, (ext.batch_size, TILE_PX, TILE_PX, 3), dtype=np.uint8)
    ext.embed(batch[:4])  # warm-up (oneDNN primitive creation)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        ext.embed(batch)
        done += len(batch)
    return {"tiles": done, "seconds": time.perf_counter() - t0}


def case_slide(model: str, slide: str, outdir: str, qc: str = "otsu") -> dict:
    from slideflow.features import TileSelection, generate_bags, jobs_from_paths

    ext = _build(model)
    ext.embed(__import__("numpy").zeros((2, TILE_PX, TILE_PX, 3), "uint8"))
    t0 = time.perf_counter()
    rep = generate_bags(jobs_from_paths([slide]), ext, outdir, TILE_PX, TILE_UM,
                        selection=TileSelection(qc=None if qc == "none" else qc),
                        force_regenerate=True, progress=False)
    return {"tiles": rep.tiles, "seconds": time.perf_counter() - t0}


def case_tfrecord(model: str, tfrecord: str, outdir: str) -> dict:
    from slideflow.features import SlideJob, generate_bags

    ext = _build(model)
    ext.embed(__import__("numpy").zeros((2, TILE_PX, TILE_PX, 3), "uint8"))
    job = SlideJob(name=Path(tfrecord).stem, tfrecord=Path(tfrecord))
    t0 = time.perf_counter()
    rep = generate_bags([job], ext, outdir, TILE_PX, TILE_UM, force_regenerate=True,
                        progress=False)
    return {"tiles": rep.tiles, "seconds": time.perf_counter() - t0}


def case_cold(slide: str, weights: str) -> dict:
    t0 = time.perf_counter()
    import slideflow as sf

    wsi = sf.WSI(slide, TILE_PX, TILE_UM).qc("otsu")
    ext = sf.build_feature_extractor("resnet50_imagenet", weights=weights)
    grid = ext(wsi)
    return {"tiles": int(grid.rows.shape[0]), "seconds": time.perf_counter() - t0}


def case_import() -> dict:
    t0 = time.perf_counter()
    import slideflow  # noqa: F401

    return {"tiles": 0, "seconds": time.perf_counter() - t0}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). ru_maxrss is not used: Linux carries it across exec,
    so a child would report its parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(*args: str) -> dict:
    """Run one case in a subprocess; adds its peak RSS (MiB)."""
    cmd = [sys.executable, __file__, "--case", *args]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"case {args} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall"] = time.perf_counter() - t0
    return res


def _case_main(args: list[str]) -> None:
    name, rest = args[0], args[1:]
    fn = {"model": lambda m, n: case_model(m, int(n)), "slide": case_slide,
          "tfrecord": case_tfrecord, "cold": case_cold, "import": case_import}[name]
    res = fn(*rest)
    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(res))


def prepare(cache: Path, large: int) -> dict[str, Path]:
    """Synthetic pyramid, PNG TFRecords of both slides, a local ResNet50 checkpoint."""
    import torch

    import slideflow as sf
    from slideflow.io.imgcodec import encode
    from slideflow.io.tfrecord import TFRecordWriter

    from synthetic import CMU, make_pyramid

    big = make_pyramid(cache / f"sf_bench_{large}.tif", large, large)
    paths = {"small": CMU, "large": big}
    for key, slide in list(paths.items()):
        rec = cache / f"bench_{key}_{TILE_PX}_{TILE_UM}.tfrecords"
        if not rec.exists():
            wsi = sf.WSI(slide, TILE_PX, TILE_UM).qc("otsu")
            half = wsi.full_extract_px // 2
            with TFRecordWriter(rec) as w:
                for tiles, coords in wsi.tiles():
                    for t, (x, y) in zip(tiles, coords):
                        w.write(encode(t, "png"), wsi.name, int(x) + half, int(y) + half)
            (rec.with_suffix(".extract.json")).write_text(
                json.dumps({"full_extract_px": wsi.full_extract_px}))
        paths[f"{key}_tfr"] = rec
    ckpt = cache / "resnet50_random.pth"
    if not ckpt.exists():
        import timm

        torch.manual_seed(0)
        torch.save(timm.create_model("resnet50", num_classes=0).state_dict(), ckpt)
    paths["resnet50_ckpt"] = ckpt
    return paths


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        _case_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", type=int, default=12000)
    ap.add_argument("--models", default="efficientnet_lite0_imagenet,resnet50_imagenet")
    ap.add_argument("--model-tiles", type=int, default=256)
    args = ap.parse_args()
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir())) / "sf_bench"
    cache.mkdir(parents=True, exist_ok=True)
    paths = prepare(cache, args.large)
    out = Path(tempfile.mkdtemp(prefix="sf_bags_"))
    rows = []
    for model in args.models.split(","):
        ceiling = run_case("model", model, str(args.model_tiles))
        rows.append((model, "model-only (preloaded)", ceiling, 1.0))
        for key in ("small", "large"):
            # CMU-1 without QC (117 tiles) fills whole batches like the large slide (Otsu,
            # 2,111 tiles): peak RSS then compares slide size, not batch size
            r = run_case("slide", model, str(paths[key]), str(out / f"{model}_{key}"),
                         "none" if key == "small" else "otsu")
            rows.append((model, f"slide e2e ({key})", r, _ratio(r, ceiling)))
            r = run_case("tfrecord", model, str(paths[f"{key}_tfr"]), str(out / f"t_{model}_{key}"))
            rows.append((model, f"tfrecord e2e ({key})", r, _ratio(r, ceiling)))
    cold = run_case("cold", str(paths["small"]), str(paths["resnet50_ckpt"]))
    rows.append(("resnet50_imagenet", "cold one-slide run (wall)", cold, None))
    imp = run_case("import")
    rows.append(("-", "import slideflow", imp, None))
    print(f"\ncores={os.cpu_count()}  tile={TILE_PX}px/{TILE_UM}um  large={args.large}px")
    print(f"{'model':28} {'case':28} {'tiles':>6} {'sec':>8} {'tiles/s':>8} {'x ceiling':>9} "
          f"{'peak MiB':>9}")
    for model, case, r, ratio in rows:
        tps = r["tiles"] / r["seconds"] if r["tiles"] else 0
        secs = r["wall"] if "cold" in case else r["seconds"]
        print(f"{model:28} {case:28} {r['tiles']:6d} {secs:8.3f} {tps:8.1f} "
              f"{'' if ratio is None else f'{ratio:.2f}':>9} {r['peak_rss_mb']:9.0f}")


def _ratio(r: dict, ceiling: dict) -> float:
    return (r["tiles"] / r["seconds"]) / (ceiling["tiles"] / ceiling["seconds"])


if __name__ == "__main__":
    main()
