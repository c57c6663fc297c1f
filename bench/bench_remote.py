"""Remote slides: tiles/s read from a loopback S3 server (moto) vs the local file, and requests
per 1,000 tiles, on a synthetic JPEG pyramid.

Run: .venv/bin/python bench/bench_remote.py [--size 10000] [--tile-px 256 --tile-um 128]
[--batch-size 64]

A small `--batch-size` makes the read request-bound (one or two GETs per batch): what a
sparse slide or random access costs, where the client's CPU per GET shows.

Besides the read rates it times a fetch-only bound: the same bytes in the same number of ranged
GETs through the reader's fetch layer with no decoding, i.e. what the server can deliver.

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_all(path: str | Path, tile_px: int, tile_um: float, threads: int | None,
             server_pid: int | None = None, batch_size: int = 64) -> dict:
    """Open, QC and read every tile of `path`; rates, digest, fetch counts and, for the read,
    the CPU seconds of this process and of the server process (`server_pid`)."""
    t0 = time.perf_counter()
    wsi = sf.WSI(path, tile_px, tile_um).qc("otsu")
    t1 = time.perf_counter()
    cpu0 = (cpu_seconds(os.getpid()), cpu_seconds(server_pid) if server_pid else 0.0)
    n, digest = 0, hashlib.sha256()
    for tiles, _ in wsi.tiles(batch_size=batch_size, num_threads=threads):
        digest.update(tiles.tobytes())
        n += len(tiles)
    t2 = time.perf_counter()
    cpu = (cpu_seconds(os.getpid()) - cpu0[0],
           (cpu_seconds(server_pid) - cpu0[1]) if server_pid else 0.0)
    stats = wsi.fetch_stats or {}
    wsi.close()
    return {"open_qc_s": t1 - t0, "tiles": n, "read_s": t2 - t1,
            "tiles_per_s": n / (t2 - t1) if n else 0.0, "sha256": digest.hexdigest(), "reader_cpu_s": cpu[0], "server_cpu_s": cpu[1], **stats}


def fetch_only(url: str, nbytes: int, requests: int, concurrency: int = 8) -> float:
    """Seconds to GET `nbytes` of `url` in `requests` equal ranged GETs, `concurrency` at a
    time, through the reader's own fetch layer and nothing else (no decode): what the server
    and the loopback can deliver, the bound of any remote read of those bytes."""
    from slideflow.remote.fetch import RemoteObject, run_all

    obj = RemoteObject(url)
    nbytes = min(nbytes, obj.size)
    step = -(-nbytes // max(1, requests))
    spans = [(a, min(a + step, nbytes)) for a in range(0, nbytes, step)]
    t0 = time.perf_counter()
    got = run_all([lambda a=a, b=b: obj.get(a, b) for a, b in spans], concurrency)
    secs = time.perf_counter() - t0
    assert sum(map(len, got)) == nbytes
    return secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10000, help="side of the synthetic pyramid")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--tile-um", type=float, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    if args.rounds < 1 or args.batch_size < 1:
        ap.error("--rounds and --batch-size must be at least 1")
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir()))
    local = make_pyramid(cache / f"sf_bench_{args.size}.tif", args.size, args.size)
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; sys.path.insert(0, {tests!r}); "
         "from remote_servers import S3Server; s = S3Server(); print(s.endpoint, flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rows: dict[str, list] = {"local": [], "s3": []}
    fetch_s: list[float] = []
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
                rows[name].append(read_all(where, args.tile_px, args.tile_um, args.threads,
                                           child.pid if name == "s3" else None,
                                           args.batch_size))
            last = rows["s3"][-1]
            fetch_s.append(fetch_only(url, last["bytes_fetched"], last["requests"]))
    finally:
        child.stdin.close()  # the server exits when its stdin closes
        child.wait(timeout=30)
    best = {k: max(v, key=lambda r: r["tiles_per_s"]) for k, v in rows.items()}
    if best["local"]["sha256"] != best["s3"]["sha256"]:
        raise SystemExit("the tiles read from S3 differ from the local file's")
    s3 = best["s3"]
    print(f"pyramid {args.size}x{args.size} ({local.stat().st_size / 1e6:.1f} MB), "
          f"tile {args.tile_px}px/{args.tile_um:g}um, {s3['tiles']} tiles, batch "
          f"{args.batch_size}, cores={os.cpu_count()}")
    for name, r in best.items():
        print(f"{name:6} open+qc {r['open_qc_s']:6.2f} s  read {r['read_s']:6.2f} s  "
              f"{r['tiles_per_s']:7.0f} tiles/s")
    print(f"s3/local tiles/s ratio: {s3['tiles_per_s'] / best['local']['tiles_per_s']:.2f}")
    bound = min(fetch_s)
    print(f"fetch only (same bytes and request count, no decode): {bound:.2f} s "
          f"({s3['bytes_fetched'] / 1e6 / bound:.0f} MB/s from the server); "
          f"s3 read / fetch-only bound: {bound / s3['read_s']:.2f}")
    busy = (s3["reader_cpu_s"] + s3["server_cpu_s"]) / (os.cpu_count() * s3["read_s"])
    print(f"CPU during the s3 read: reader {s3['reader_cpu_s']:.2f} s + server "
          f"{s3['server_cpu_s']:.2f} s = {100 * busy:.0f} % of {os.cpu_count()} cores x "
          f"{s3['read_s']:.2f} s (local read: reader {best['local']['reader_cpu_s']:.2f} s)")
    print(f"open+qc+read, s3/local: "
          f"{(best['local']['open_qc_s'] + best['local']['read_s']) / (s3['open_qc_s'] + s3['read_s']):.2f}")
    print(f"s3 requests: {s3['requests']} ({1000 * s3['requests'] / max(1, s3['tiles']):.1f} "
          f"per 1000 tiles), {s3['bytes_fetched'] / 1e6:.1f} MB fetched, "
          f"{s3['retries']} retries")


if __name__ == "__main__":
    main()
