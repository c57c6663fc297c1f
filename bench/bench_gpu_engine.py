"""Engine rows of bench/bench_gpu.py: the model alone and every way of feeding it, per model.

For EfficientNet-Lite0, ResNet50 and the UNI architecture (ViT-L/16, random weights):

    model, tiles on device   preprocess + forward on uint8 tiles already on the device (the limit)
    extractor(numpy batch)   host uint8 NHWC batch -> pinned copy on a side stream -> model
    extractor(wsi)           the slide reader per decoder (cpu: libjpeg-turbo pool; cuda: nvJPEG)
                             and thread count, through the engine
    extractor(tfrecords)     TFRecord of the same tiles, decoded by the CPU pool or nvJPEG

`vs limit` is tiles/s over the first row's tiles/s for the same model. Also runnable alone:
`python bench/bench_gpu_engine.py --device cpu --quick` (a CPU dry run of every code path).
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from pathlib import Path
from typing import Any

import slideflow as sf

MODELS = {  # label -> (registry name, build options)
    "EfficientNet-Lite0": ("efficientnet_lite0_imagenet", {}),
    "ResNet50": ("resnet50_imagenet", {"pretrained": False}),
    "ViT-L/16 (UNI arch.)": ("uni", {"pretrained": False}),
}
FALLBACK_VIT = ("timm:vit_large_patch16_224", {"pretrained": False})
#: whether wsi.tiles() takes decoder= (the stored-tile reader); else one decoder row
READER_DECODERS = "decoder" in inspect.signature(sf.WSI.tiles).parameters


def build(name: str, options: dict[str, Any], device: str, batch: int) -> Any:
    kwargs = dict(options, device=device, batch_size=batch)
    if device.startswith("cuda"):
        kwargs["mixed_precision"] = "bf16"
    try:
        return sf.build_feature_extractor(name, **kwargs)
    except Exception as exc:  # the UNI spec lives in slideflow-noncommercial
        if name != "uni":
            raise
        print(f"# uni not buildable here ({type(exc).__name__}); using {FALLBACK_VIT[0]}")
        return sf.build_feature_extractor(FALLBACK_VIT[0], **dict(FALLBACK_VIT[1], **kwargs))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def model_rows(slide: Path, device: str, threads: list[int], batch: int, n_tiles: int,
               repeats: int, tfrecord: Path, decoders: list[str], px: int, um: float
               ) -> list[tuple[str, str, int, float, str | None]]:
    """[(model, what, tiles, seconds, limit key)] for every model."""
    import numpy as np
    import torch

    rows = []
    rng = np.random.default_rng(0)
    host = rng.integers(0, 256, (n_tiles, px, px, 3), dtype=np.uint8)
    for label, (name, options) in MODELS.items():
        ext = build(name, options, device, batch)
        resident = torch.from_numpy(host[:batch]).to(device).permute(0, 3, 1, 2)
        reps = max(1, n_tiles // batch)

        def on_device(e=ext, x=resident, r=reps) -> None:
            for _ in range(r):
                e.forward_preprocessed(e.preprocess(x))

        on_device()  # warm-up (cudnn autotune, allocator, folded copy)
        rows.append((label, "model, tiles on device", reps * batch,
                     timed(on_device, device, repeats), None))
        rows.append((label, "extractor(uint8 numpy batch)", n_tiles,
                     timed(lambda e=ext: e(host), device, repeats), label))
        for decoder in decoders:
            for t in threads:
                wsi = sf.WSI(slide, px, um)

                def whole(e=ext, w=wsi, t=t, d=decoder) -> None:
                    e(w, num_threads=t, **({"decoder": d} if READER_DECODERS else {}))

                rows.append((label, f"extractor(wsi), {decoder} decoder, {t} threads", len(wsi),
                             timed(whole, device, 1), label))
                wsi.close()
        for decoder in ("cpu", "nvjpeg"):
            rows.append((label, f"extractor('x.tfrecords'), {decoder}", _count(tfrecord),
                         timed(lambda e=ext, d=decoder: e(tfrecord, decoder=d), device, 1),
                         label))
        del ext
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _count(tfrecord: Path) -> int:
    from slideflow.io.tfrecord import TFRecord

    return len(TFRecord(tfrecord))


def make_tfrecord(slide: Path, folder: Path, px: int, um: float) -> Path:
    from slideflow.extract import extract_slide

    r = extract_slide(slide, folder, px, um)
    if r.status == "failed":
        raise SystemExit(f"TFRecord extraction failed: {r.error}")
    return r.tfrecord


def print_rows(rows: list[tuple[str, str, int, float, str | None]]) -> None:
    limits = {m: n / s for m, what, n, s, key in rows if key is None}
    print(f"| {'model':22} | {'what':44} | {'tiles':>6} | {'tiles/s':>8} | {'vs limit':>8} |")
    print(f"|{'-' * 24}|{'-' * 46}|{'-' * 8}|{'-' * 10}|{'-' * 10}|")
    for model, what, n, secs, key in rows:
        rate = n / secs if secs else 0.0
        ratio = f"{rate / limits[key]:8.2f}" if key else " " * 8
        print(f"| {model:22} | {what:44} | {n:6d} | {rate:8.0f} | {ratio} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small pyramid, few tiles (dry run)")
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tiles", type=int, default=2048, help="tiles for the batch rows")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    from slideflow.slide.reader import default_threads

    from synthetic import make_pyramid

    if args.quick:
        args.size, args.batch, args.tiles, args.repeats = 700, 8, 8, 1
    cores = default_threads()
    threads = args.threads or sorted({4, cores} if not args.quick else {cores})
    decoders = ["cpu"] + (["cuda"] if args.device.startswith("cuda") and READER_DECODERS else [])
    cache = Path(tempfile.gettempdir())
    slide = make_pyramid(cache / f"sf-bench-gpu-{args.size}.tif", args.size, args.size)
    px, um = 224, 112
    with tempfile.TemporaryDirectory() as tmp:
        tfr = make_tfrecord(slide, Path(tmp), px, um)
        t0 = time.perf_counter()
        rows = model_rows(slide, args.device, threads, args.batch, args.tiles, args.repeats,
                          tfr, decoders, px, um)
    print(f"# {time.strftime('%Y-%m-%d')} | device {args.device} | {slide.name} | "
          f"{px} px / {um} um | batch {args.batch} | {time.perf_counter() - t0:.0f} s")
    print_rows(rows)


if __name__ == "__main__":
    main()
