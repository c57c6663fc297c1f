"""Remote slides: tiles/s read from a loopback S3 server (moto) vs the local file, and requests
per 1,000 tiles, on a synthetic JPEG pyramid.

Run: .venv/bin/python bench/bench_remote.py [--size 10000] [--tile-px 256 --tile-um 128]

The S3 server (moto, tests/remote_servers.py) runs in a child process on 127.0.0.1; on a
small machine it still shares the CPU cores with the reader, so the ratio understates what a
separate object store gives.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import slideflow as sf

from synthetic import make_pyramid


def read_all(path: str | Path, tile_px: int, tile_um: float, threads: int | None) -> dict:
    t0 = time.perf_counter()
    wsi = sf.WSI(path, tile_px, tile_um).qc("otsu")
    t1 = time.perf_counter()
    n, digest = 0, hashlib.sha256()
    for tiles, _ in wsi.tiles(batch_size=64, num_threads=threads):
        digest.update(tiles.tobytes())
        n += len(tiles)
    t2 = time.perf_counter()
    stats = wsi.fetch_stats or {}
    wsi.close()
    return {"open_qc_s": t1 - t0, "tiles": n, "read_s": t2 - t1,
            "tiles_per_s": n / (t2 - t1) if n else 0.0, "sha256": digest.hexdigest(), **stats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10000, help="side of the synthetic pyramid")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--tile-um", type=float, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir()))
    local = make_pyramid(cache / f"sf_bench_{args.size}.tif", args.size, args.size)
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; sys.path.insert(0, {tests!r}); "
         "from remote_servers import S3Server; s = S3Server(); print(s.endpoint, flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rows: dict[str, list] = {"local": [], "s3": []}
    try:
        endpoint = child.stdout.readline().strip()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL_S3=endpoint)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        s3.upload_file(str(local), "bench", local.name)
        url = f"s3://bench/{local.name}"
        for _ in range(args.rounds):  # interleaved: a shared machine's load hits both
            for name, where in (("local", local), ("s3", url)):
                rows[name].append(read_all(where, args.tile_px, args.tile_um, args.threads))
    finally:
        child.stdin.close()  # the server exits when its stdin closes
        child.wait(timeout=30)
    best = {k: max(v, key=lambda r: r["tiles_per_s"]) for k, v in rows.items()}
    if best["local"]["sha256"] != best["s3"]["sha256"]:
        raise SystemExit("the tiles read from S3 differ from the local file's")
    s3 = best["s3"]
    print(f"pyramid {args.size}x{args.size} ({local.stat().st_size / 1e6:.1f} MB), "
          f"tile {args.tile_px}px/{args.tile_um:g}um, {s3['tiles']} tiles, cores={os.cpu_count()}")
    for name, r in best.items():
        print(f"{name:6} open+qc {r['open_qc_s']:6.2f} s  read {r['read_s']:6.2f} s  "
              f"{r['tiles_per_s']:7.0f} tiles/s")
    print(f"s3/local tiles/s ratio: {s3['tiles_per_s'] / best['local']['tiles_per_s']:.2f}")
    print(f"s3 requests: {s3['requests']} ({1000 * s3['requests'] / max(1, s3['tiles']):.1f} "
          f"per 1000 tiles), {s3['bytes_fetched'] / 1e6:.1f} MB fetched, "
          f"{s3['retries']} retries")


if __name__ == "__main__":
    main()
