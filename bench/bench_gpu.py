"""GPU-host benchmark: decoders, the slide reader per decoder and thread count (and, added by
the engine, the model rows), as one table measured in one run.

Run on a CUDA host:   python bench/bench_gpu.py                   (decoder rows: cpu + cuda)
Dry run on CPU:       python bench/bench_gpu.py --device cpu --size 4000 --threads 1 2

It builds (once) a JPEG pyramid of --size x --size px from CMU-1 pixels (bench/synthetic.py) in
$SLIDEFLOW_BENCH_CACHE and reads it at 224 px / 112 µm (as-is level 0, no QC). Each row is
tiles/s and megapixels/s; `vs limit` divides by the libjpeg-turbo decode rate of the same
file's stored tiles on the same number of threads (the CPU reader's ceiling), measured right
before each reader repeat for the stored-tile rows (best of --repeats for both).

Sections are functions `(ctx) -> list[Row]` in SECTIONS; add rows by appending a section.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slideflow as sf
from slideflow.slide.decode import CpuDecoder, TorchDecoder
from slideflow.slide.stored import StoredLevel, open_stored_level
from slideflow.slide.stored_reader import usable_cores

from synthetic import make_pyramid

TILE_PX, TILE_UM = 224, 112


@dataclass
class Row:
    section: str
    name: str
    tiles: int
    seconds: float
    mpix: float  # megapixels delivered (output) or decoded (stored)
    limit_key: str | None = None  # which decode rate this row is compared with
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0

    @property
    def mpix_per_s(self) -> float:
        return self.mpix / self.seconds if self.seconds else 0.0


@dataclass
class Context:
    args: argparse.Namespace
    slide: Path
    device: str
    limits: dict[str, float] = field(default_factory=dict)  # key -> MPix/s

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Fastest wall time of `repeats` calls (and the last result)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def stored_streams(slide: Path, level: int = 0) -> tuple[list[bytes], StoredLevel]:
    """Every stored tile of `level` as a complete JPEG stream (tables merged)."""
    wsi = sf.WSI(slide, TILE_PX, TILE_UM)
    layout, why = open_stored_level(wsi.reader, level)
    if layout is None:
        raise SystemExit(f"{slide}: no stored-tile layout ({why})")
    raw = layout.read(range(len(layout.offsets)))
    return [layout.stream(raw[k]) for k in sorted(raw) if raw[k] is not None], layout


def decode_seconds(streams: list[bytes], threads: int) -> float:
    """Wall time of libjpeg-turbo decoding `streams` on `threads` threads."""
    dec = CpuDecoder()
    chunks = [streams[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(dec.decode_many, chunks))
        return time.perf_counter() - t


# -- sections -----------------------------------------------------------------------------
def decoder_rows(ctx: Context) -> list[Row]:
    """Decoders alone on the file's stored tiles: libjpeg-turbo per thread count, nvJPEG."""
    streams, layout = stored_streams(ctx.slide)
    streams = streams[: ctx.args.max_tiles]
    mpix = len(streams) * layout.tile_w * layout.tile_h / 1e6
    rows = []
    for threads in ctx.args.threads:
        secs, _ = best_of(lambda t=threads: decode_seconds(streams, t), ctx.args.repeats)
        ctx.limits[f"cpu{threads}"] = mpix / secs
        rows.append(Row("decode", f"libjpeg-turbo, {threads} threads", len(streams), secs,
                        mpix))
    if ctx.device != "cpu":
        dec = TorchDecoder(ctx.device)
        batch = ctx.args.batch

        def run() -> None:
            for a in range(0, len(streams), batch):
                dec.decode_many(streams[a:a + batch])
            ctx.sync()

        run()  # warm-up (nvJPEG handles, allocator)
        secs, _ = best_of(run, ctx.args.repeats)
        ctx.limits["cuda"] = mpix / secs
        rows.append(Row("decode", f"nvJPEG ({ctx.device}), batch {batch}", len(streams), secs,
                        mpix))
    return rows


def reader_rows(ctx: Context) -> list[Row]:
    """`wsi.tiles()` alone: stored-tile path per decoder and thread count, region path."""
    rows = []
    out_mpix_per_tile = TILE_PX * TILE_PX / 1e6

    def read(tile_reader: str, threads: int, decoder: str) -> int:
        wsi = sf.WSI(ctx.slide, TILE_PX, TILE_UM, tile_reader=tile_reader)
        n = 0
        for tiles, _ in wsi.tiles(batch_size=ctx.args.batch, num_threads=threads,
                                  decoder=decoder):
            n += len(tiles)
        ctx.sync()
        wsi.close()
        return n

    streams, layout = stored_streams(ctx.slide)
    stored_mpix = len(streams) * layout.tile_w * layout.tile_h / 1e6
    for threads in ctx.args.threads:
        # paired with a decode of the same stored tiles right before it, best of each over the
        # repeats, so a loaded machine slows both sides of the ratio alike
        best_read, best_dec, n = float("inf"), float("inf"), 0
        for _ in range(max(1, ctx.args.repeats)):
            best_dec = min(best_dec, decode_seconds(streams, threads))
            t = time.perf_counter()
            n = read("stored", threads, "cpu")
            best_read = min(best_read, time.perf_counter() - t)
        key = f"cpu{threads}-paired"
        ctx.limits[key] = stored_mpix / best_dec
        rows.append(Row("reader", f"stored tiles, cpu decoder, {threads} threads", n, best_read,
                        n * out_mpix_per_tile, limit_key=key))
    if ctx.device != "cpu":
        read("stored", 1, ctx.device)  # warm-up
        secs, n = best_of(lambda: read("stored", 1, ctx.device), ctx.args.repeats)
        rows.append(Row("reader", f"stored tiles, {ctx.device} decoder", n, secs,
                        n * out_mpix_per_tile, limit_key="cuda"))
    for threads in ctx.args.threads:
        secs, n = best_of(lambda t=threads: read("region", t, "cpu"), 1)
        rows.append(Row("reader", f"openslide region path, {threads} threads", n, secs,
                        n * out_mpix_per_tile, limit_key=f"cpu{threads}"))
    return rows


def fidelity_rows(ctx: Context) -> list[Row]:
    """PSNR of the torch decoder path (on ctx.device; torch-on-CPU in a dry run) against the
    CPU path, per TIFF-family test slide (nvJPEG may upsample 4:2:0 chroma differently)."""
    import numpy as np
    import torch

    from synthetic import SLIDES

    dec = TorchDecoder(ctx.device)  # on a CPU dry run: the same torch code on the CPU
    cases = [(SLIDES / "CMU-1-Small-Region.svs", None), (SLIDES / "CMU-1-Small-Region-dicom", None),
             (SLIDES / "CMU-1-Small-Region.jpeg.tiff", 0.499),
             (SLIDES / "multiframe_camelyon_challenge_image.dcm", None), (ctx.slide, None)]
    print(f"# torch decoder on {ctx.device} vs CPU decoder, {TILE_PX} px tiles (use_edge_tiles)")
    for path, mpp in cases:
        if not path.exists():
            continue
        um = TILE_UM if "camelyon" not in path.name else TILE_PX * 40.0
        wsi = sf.WSI(path, TILE_PX, um, mpp=mpp, use_edge_tiles=True)
        if wsi.read_path != "stored":
            continue
        coords = wsi.coords[:512]
        cpu = np.concatenate([t for t, _ in wsi.tiles(coords=coords)]).astype(np.float64)
        dev = torch.cat([t.cpu() for t, _ in wsi.tiles(coords=coords, decoder=dec)])
        err = (dev.numpy().astype(np.float64) - cpu) ** 2
        psnr = 10 * np.log10(255 ** 2 / err.mean()) if err.mean() else float("inf")
        print(f"  {path.name:42} tiles {len(coords):4d}  PSNR {psnr:6.1f} dB  "
              f"max |diff| {np.sqrt(err.max()):.0f}")
    return []


#: sections run in this order; the engine adds its model rows (model alone, extractor(batch),
#: extractor(wsi) per decoder and thread count, TFRecord path) by appending here
SECTIONS: list[Callable[[Context], list[Row]]] = [fidelity_rows, decoder_rows, reader_rows]


def hardware(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    text = f"{cpu}, {usable_cores()} usable cores"
    if device.startswith("cuda"):
        import torch

        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return text


def print_table(ctx: Context, rows: list[Row]) -> None:
    print(f"# {time.strftime('%Y-%m-%d')} | {hardware(ctx.device)} | {ctx.slide.name} | "
          f"{TILE_PX} px / {TILE_UM} um")
    print(f"| {'section':8} | {'what':44} | {'tiles':>6} | {'tiles/s':>8} | {'MPix/s':>7} | "
          f"{'vs limit':>8} |")
    print(f"|{'-' * 10}|{'-' * 46}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 10}|")
    for r in rows:
        lim = ctx.limits.get(r.limit_key or "")
        ratio = f"{r.mpix_per_s / lim:8.2f}" if lim else " " * 8
        print(f"| {r.section:8} | {r.name:44} | {r.tiles:6d} | {r.tiles_per_s:8.0f} | "
              f"{r.mpix_per_s:7.1f} | {ratio} |")


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (dry run)")
    ap.add_argument("--size", type=int, default=10000, help="side of the synthetic pyramid")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="CPU thread counts (default: 1, 4, ..., usable cores)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-tiles", type=int, default=None, help="cap for decoder rows")
    args = ap.parse_args(argv)
    cores = usable_cores()
    args.threads = args.threads or sorted({1, min(4, cores), cores})
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir()))
    slide = make_pyramid(cache / f"sf_bench_{args.size}.tif", args.size, args.size)
    ctx = Context(args, slide, args.device)
    rows: list[Row] = []
    for section in SECTIONS:
        rows.extend(section(ctx))
    print_table(ctx, rows)
    return rows


if __name__ == "__main__":
    main()
