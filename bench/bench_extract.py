"""Tile extraction benchmark: slides -> JPEG TFRecords, tiles/s and where the time goes.

For each slide the stages are timed on their own, then together:

    read+decode   wsi.tiles(): batched region reads + slicing (+ resize), reader threads
    encode        JPEG q100 4:4:4 (simplejpeg) of the same tiles, in a thread pool
    write         TFRecordWriter.write of the encoded bytes (framing, crc32c, file write)
    extract       extract_slide(): all of the above overlapped, plus the index and sidecar

and a dataset of several slides is extracted with 1 and 2 slides in flight. A naive baseline
(one openslide read_region + one Pillow JPEG encode per tile, serial) gives context.

Run: .venv/bin/python bench/bench_extract.py [--large 20000] [--copies 6]
The synthetic pyramid (CMU-1 pixels mirrored to --large x --large px, tiled JPEG TIFF with
levels 1/4/16) is written once to $SLIDEFLOW_BENCH_CACHE (default: the temp dir).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import slideflow as sf
from slideflow.extract import extract_slide
from slideflow.io import imgcodec
from slideflow.io.tfrecord import TFRecordWriter

from synthetic import CMU, make_pyramid

KEEP = 1500  # tiles kept in memory for the encode / write stages


def stages(path: Path, px: int, um: float, qc: str | None, threads: int, tmp: Path) -> dict:
    wsi = sf.WSI(path, px, um)
    if qc:
        wsi.qc(qc)
    n = len(wsi)
    kept = []
    t = time.perf_counter()
    for tiles, _ in wsi.tiles(batch_size=64, num_threads=threads):
        if sum(len(k) for k in kept) < KEEP:
            kept.append(tiles)
    read_s = time.perf_counter() - t
    batch = np.concatenate(kept)[:KEEP]
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        chunks = np.array_split(batch, threads * 4)
        encoded = [b for part in pool.map(
            lambda c: [imgcodec.encode(x, "jpg", 100) for x in c], chunks) for b in part]
        enc_s = (time.perf_counter() - t) * n / len(batch)
    t = time.perf_counter()
    with TFRecordWriter(tmp / "w.tfrecords") as w:
        for i in range(n):
            w.write(encoded[i % len(encoded)], "bench", i, i)
    write_s = time.perf_counter() - t
    r = extract_slide(path, tmp / "x", px, um, qc=qc, skip_extracted=False,
                      num_threads=threads)
    assert r.status == "done", r.error
    shutil.rmtree(tmp / "x")
    return {"slide": path.name, "tile": f"{px}px/{um}um", "threads": threads, "tiles": n,
            "read": n / read_s, "encode": n / enc_s, "write": n / write_s,
            "extract": r.tiles / r.seconds, "kb_per_tile": np.mean([len(b) for b in encoded]) / 1e3,
            "timings": r.timings, "seconds": r.seconds}


def passthrough_rounds(path: Path, threads: int, tmp: Path, rounds: int = 3) -> dict:
    """Aligned pyramid, 256 px at 128 µm (mpp 0.5, level 0 as-is): extract_slide with and
    without stored-JPEG passthrough, interleaved rounds; checks the records' bytes."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for on in (True, False):
            out = tmp / f"pt{int(on)}"
            r = extract_slide(path, out, 256, 128, skip_extracted=False, num_threads=threads,
                              passthrough=on)
            assert r.status == "done", r.error
            rates[on].append(r.tiles / r.seconds)
    return {"tiles": r.tiles, "on": rates[True], "off": rates[False],
            "checked": check_passthrough(path, tmp / "pt1")}


def check_passthrough(path: Path, out: Path, sample: int = 200) -> str:
    """Every record is its stored tile's stream (stored bytes after the SOI, unchanged); a
    sample decodes to exactly openslide's pixels."""
    import openslide

    from slideflow.io.tfrecord import TFRecord
    from slideflow.slide.passthrough import self_contained, wsi_passthrough_plan

    wsi = sf.WSI(path, 256, 128)
    layout, plan = wsi._stored[0], wsi_passthrough_plan(wsi)
    assert plan.count == len(wsi), plan.fallback_reasons
    records = [rec["image_raw"] for rec in TFRecord(next(out.glob("*.tfrecords")))]
    stored = layout.read(plan.keys)
    for data, k in zip(records, plan.keys.tolist()):
        assert data.endswith(stored[k][2:]) and data == self_contained(layout.stream(stored[k]))
    osr = openslide.OpenSlide(str(path))
    pick = np.random.default_rng(0).choice(len(records), min(sample, len(records)), False)
    for i in pick.tolist():
        x, y = wsi.coords[i]
        ref = np.asarray(osr.read_region((int(x), int(y)), 0, (256, 256)))[..., :3]
        assert np.array_equal(imgcodec.decode(records[i]), ref), i
    return f"{len(records)} records byte-identical to the stored streams, {len(pick)} pixel-equal"


def naive(path: Path, px: int, um: float, limit: int = 300) -> float:
    """One read_region + Pillow JPEG per tile, serial (tiles/s)."""
    import openslide

    wsi = sf.WSI(path, px, um)
    osr = openslide.OpenSlide(str(path))
    e = wsi.full_extract_px
    coords = wsi.coords[:limit]
    t = time.perf_counter()
    for x, y in coords:
        im = osr.read_region((int(x), int(y)), 0, (e, e)).convert("RGB").resize((px, px))
        im.save(io.BytesIO(), "JPEG", quality=100)
    return len(coords) / (time.perf_counter() - t)


def dataset_run(tmp: Path, copies: int, px: int, um: float, in_flight: int, threads: int
                ) -> tuple[int, float]:
    slides = tmp / "slides"
    if not slides.exists():
        slides.mkdir()
        for i in range(copies):
            (slides / f"cmu{i}.svs").symlink_to(CMU)
    root = tmp / f"proj{in_flight}"
    shutil.rmtree(root, ignore_errors=True)
    P = sf.create_project(root, slides=slides)
    s = P.extract_tiles(px, um, qc="otsu", slides_in_flight=in_flight, num_threads=threads,
                        progress=False, report=False)
    return s.tiles, s.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", type=int, default=20000, help="side of the synthetic pyramid")
    ap.add_argument("--copies", type=int, default=6, help="slides in the dataset run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--passthrough-only", action="store_true",
                    help="only the stored-JPEG passthrough vs re-encode comparison")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir()))
    t = time.perf_counter()
    big = make_pyramid(cache / f"sf_bench_{args.large}.tif", args.large, args.large)
    print(f"synthetic pyramid {big} ({time.perf_counter() - t:.1f} s to make or find)")
    aligned = make_pyramid(cache / f"sf_bench_aligned_{args.large}.tif", args.large,
                           args.large, mpp=0.5)
    with tempfile.TemporaryDirectory() as d:
        pt = passthrough_rounds(aligned, args.threads, Path(d))
    on, off = np.median(pt["on"]), np.median(pt["off"])
    print(f"\naligned {args.large}px pyramid, 256px/128um (level 0 as-is), {pt['tiles']} tiles, "
          f"extract_slide tiles/s (median of {len(pt['on'])} interleaved rounds):\n"
          f"  passthrough {on:.0f}  re-encode {off:.0f}  ratio {on / off:.2f}x\n"
          f"  rounds on {[round(v) for v in pt['on']]} off {[round(v) for v in pt['off']]}\n"
          f"  {pt['checked']}")
    if args.passthrough_only:
        return
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for path, px, um, qc in ((CMU, 256, 128, "otsu"), (CMU, 224, 112, None),
                                 (big, 256, 128, None), (big, 224, 224, None)):
            rows.append(stages(path, px, um, qc, args.threads, tmp))
        print(f"\ncores={os.cpu_count()} threads={args.threads}; tiles/s per stage alone, then "
              "extract = all stages overlapped (JPEG q100 4:4:4)")
        print(f"{'slide':28} {'tile':12} {'tiles':>6} {'read+dec':>9} {'encode':>8} "
              f"{'write':>8} {'extract':>8} {'kB/tile':>8}")
        for r in rows:
            print(f"{r['slide']:28} {r['tile']:12} {r['tiles']:6d} {r['read']:9.0f} "
                  f"{r['encode']:8.0f} {r['write']:8.0f} {r['extract']:8.0f} "
                  f"{r['kb_per_tile']:8.1f}")
        print("\nextract_slide() time split (s; read = waiting for reader threads, encode = "
              "CPU-seconds in the encode pool, overlapped):")
        for r in rows:
            tm = "  ".join(f"{k} {v:.2f}" for k, v in r["timings"].items() if k != "normalize")
            print(f"  {r['slide']:28} {r['tile']:12} total {r['seconds']:.2f}  {tm}")
        base = naive(CMU, 256, 128)
        print(f"\nnaive per-tile read_region + Pillow JPEG (CMU-1 256px/128um): {base:.0f} tiles/s")
        print(f"\ndataset of {args.copies} CMU-1 copies (128px/64um, otsu):")
        res = {}
        for k in (1, 2):
            n, secs = dataset_run(tmp, args.copies, 128, 64, k, args.threads)
            res[k] = n / secs
            print(f"  slides_in_flight={k}: {n} tiles in {secs:.2f} s = {n / secs:.0f} tiles/s")
        print(f"  ratio 2/1 in flight: {res[2] / res[1]:.2f}x")


if __name__ == "__main__":
    main()
