"""TFRecord tile store benchmark: encode, write, read + decode, random access.

Tiles are real H&E: 256 px crops of CMU-1-Small-Region.svs (level 0, stride 32 px, so they
overlap but are all distinct). Reads are warm-cache (the file was just written).

Run: .venv/bin/python bench/bench_tfrecord.py [--n 5000] [--px 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from slideflow.io import imgcodec, protobuf
from slideflow.io.tfrecord import TFRecord, TFRecordWriter

SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / \
    "CMU-1-Small-Region.svs"


def load_tiles(n: int, px: int) -> tuple[np.ndarray, np.ndarray]:
    """n distinct px-sized tiles of the sample slide, and their centres (level-0 px)."""
    import openslide

    slide = openslide.OpenSlide(str(os.environ.get("SLIDEFLOW_BENCH_SLIDE", SLIDE)))
    w, h = slide.dimensions
    region = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    stride = 32
    while ((w - px) // stride + 1) * ((h - px) // stride + 1) < n and stride > 1:
        stride //= 2
    ys, xs = np.mgrid[0:h - px + 1:stride, 0:w - px + 1:stride]
    corners = np.stack([xs.ravel(), ys.ravel()], 1)[:n]
    tiles = np.stack([region[y:y + px, x:x + px] for x, y in corners])
    return tiles, corners + px // 2


def rate(fn, count: int, repeat: int = 1) -> float:
    """Best-of-`repeat` items/s (machines are shared and noisy)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return count / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--px", type=int, default=256)
    args = ap.parse_args()
    tiles, centres = load_tiles(args.n, args.px)
    n = len(tiles)
    res: dict[str, float | int | str] = {"tiles": n, "px": args.px}
    print(f"{n} tiles of {args.px}px from {SLIDE.name}")

    sub = tiles[:: max(1, n // 1000)][:1000]  # encoders: 1000 tiles spread over the slide
    for name, fmt, q in (("jpg_q100", "jpg", 100), ("jpg_q80", "jpg", 80), ("png", "png", 100)):
        enc = imgcodec.encode_batch(sub, fmt, q, num_threads=1)
        res[f"encode_{name}_tiles_s"] = rate(
            lambda f=fmt, q=q: imgcodec.encode_batch(sub, f, q, num_threads=1), len(sub), 2)
        res[f"encode_{name}_2threads_tiles_s"] = rate(
            lambda f=fmt, q=q: imgcodec.encode_batch(sub, f, q, num_threads=2), len(sub), 2)
        res[f"{name}_kb_per_tile"] = round(sum(map(len, enc)) / len(enc) / 1024, 1)
        res[f"decode_{name}_tiles_s"] = rate(
            lambda e=enc: imgcodec.decode_batch(e, num_threads=1), len(sub), 2)
        res[f"decode_{name}_2threads_tiles_s"] = rate(
            lambda e=enc: imgcodec.decode_batch(e, num_threads=2), len(sub), 2)
    q420 = imgcodec.encode_batch(sub[:200], "jpg", 100, colorsubsampling="420")
    dec = imgcodec.decode_batch(q420).astype(np.float64)
    q444 = imgcodec.decode_batch(imgcodec.encode_batch(sub[:200], "jpg", 100))
    for key, d in (("psnr_jpg_q100_420", dec), ("psnr_jpg_q100_444", q444.astype(np.float64))):
        res[key] = round(float(10 * np.log10(255**2 / np.mean((d - sub[:200]) ** 2))), 2)

    encoded = imgcodec.encode_batch(tiles, "jpg", 100, num_threads=2)
    mb = sum(map(len, encoded)) / 1e6

    def encode_examples() -> None:  # results dropped, as the writer does
        for e in encoded:
            protobuf.encode_example({"image_raw": e, "slide": "CMU-1", "loc_x": 1, "loc_y": 2})

    res["example_encode_us"] = 1e6 / rate(encode_examples, n, 2)
    with tempfile.TemporaryDirectory(dir=os.environ.get("SLIDEFLOW_BENCH_CACHE")) as tmp:
        path = Path(tmp) / "CMU-1.tfrecords"

        def write() -> None:
            with TFRecordWriter(path) as w:
                for e, (x, y) in zip(encoded, centres):
                    w.write(e, "CMU-1", int(x), int(y))

        res["write_MB_s"] = rate(write, 1, 3) * path.stat().st_size / 1e6
        res["write_records_s"] = res["write_MB_s"] * 1e6 / path.stat().st_size * n
        res["file_MB"] = round(path.stat().st_size / 1e6, 1)
        rec = TFRecord(path)
        assert len(rec) == n and np.array_equal(rec.locations, centres)
        res["read_records_s"] = rate(lambda: sum(1 for _ in rec), n, 2)
        for threads in (1, 2):
            res[f"read_decode_{threads}threads_tiles_s"] = rate(
                lambda t=threads: sum(len(b) for b, _ in rec.iter_batches(64, num_threads=t)),
                n, 2)
        order = np.random.default_rng(0).permutation(n)
        res["random_access_records_s"] = rate(lambda: [rec[int(i)] for i in order], n)
        checked = TFRecord(path, verify=True)
        res["random_access_verified_records_s"] = rate(
            lambda: [checked[int(i)] for i in order], n)
        res["random_image_s"] = rate(lambda: [rec.image(int(i)) for i in order[:1000]], 1000)
        from tfrecord.reader import tfrecord_loader

        res["tfrecord_pkg_read_records_s"] = rate(
            lambda: sum(1 for _ in tfrecord_loader(str(path), None)), n)
    res["mb_jpg_q100"] = round(mb, 1)
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v:,.1f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
