"""GPU-host benchmark: the whole issue-9 table in one run (decoders, the slide reader, tile
extraction, and per model every way of feeding it), measured against its own limits.

Run on a CUDA host:   python bench/bench_gpu.py                        (about 2-4 minutes)
Dry run on CPU:       python bench/bench_gpu.py --device cpu --quick   (every CPU row, small)
Rehearsal on CPU:     python bench/bench_gpu.py --device cpu --quick --gpu-rows-on-cpu
                      (also the CUDA-only rows, with torch's decoders on the CPU)

It builds (once) a JPEG pyramid of --size x --size px from CMU-1 pixels (bench/synthetic.py) in
$SLIDEFLOW_BENCH_CACHE and reads it at 224 px / 112 µm (as-is level 0, no QC). Sections:

    fidelity   PSNR of the torch decoder path (nvJPEG) against the CPU path, per test slide
    decode     libjpeg-turbo per thread count, nvJPEG: the file's stored tiles, decoded alone
    reader     `wsi.tiles()` alone per decoder and thread count; the openslide region path
    extract    `extract_slide` -> JPEG TFRecord (its TFRecord feeds the TFRecord rows)
    <model>    EfficientNet-Lite0, ResNet50, ViT-L/16 (UNI architecture), random weights:
               model on device-resident tiles (preprocess + forward: the limit),
               `extractor(uint8 numpy batch)`, `extractor(wsi)` per decoder and thread count,
               `extractor('x.tfrecords')` per decoder

`vs limit`: reader rows divide by the libjpeg-turbo rate of the same stored tiles on the same
threads (--rounds interleaved decode/read rounds, median of each), each tile decoded into a new
array (fresh memory, as the reader's output); a second row divides by the decoder into one
reused buffer per thread (no output memory traffic: a bound no reader handing out arrays
reaches); model rows by the first row of their model. CUDA-only rows print "skipped (no CUDA)" on a CPU run.
Sections are functions `(ctx) -> list[Row]` in SECTIONS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    limit_key: str | None = None  # which rate (ctx.limits) this row is compared with
    note: str = ""  # e.g. "skipped (no CUDA)": printed instead of the rates
    printed: bool = False

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
    workdir: Path = Path(".")  # temporary folder of this run
    tfrecord: Path | None = None  # written by the extract section
    header_done: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def gpu_rows(self) -> bool:
        """Run the CUDA-only rows: on CUDA, or on the CPU with --gpu-rows-on-cpu."""
        return self.cuda or self.args.gpu_rows_on_cpu

    def torch_decoder(self) -> TorchDecoder:
        """The GPU decoder (nvJPEG on CUDA; torchvision's CPU decoder on a CPU rehearsal)."""
        return TorchDecoder(self.device)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def skipped(section: str, name: str) -> Row:
    """A CUDA-only row on a CPU run."""
    return Row(section, name, 0, 0.0, 0.0, note="skipped (no CUDA)")


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


def decode_seconds(streams: list[bytes], threads: int,
                   reuse: tuple[int, int] | None = None) -> float:
    """Wall time of libjpeg-turbo decoding `streams` on `threads` threads.

    By default every tile is decoded into a new array and kept (the decoded pixels land in
    fresh memory, as the reader's output tiles must). `reuse=(H, W)`: each thread decodes into
    one reused buffer that stays in its cache, the decoder's speed with no memory traffic for
    its output; no reader that hands out new arrays reaches it.
    """
    dec = CpuDecoder()
    chunks = [streams[i::threads] for i in range(threads)]

    def into_buffer(chunk: list[bytes]) -> None:
        buf = np.empty((*reuse, 3), np.uint8)  # type: ignore[misc]
        for s in chunk:
            dec.decode_into(s, buf)

    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(into_buffer if reuse else dec.decode_many, chunks))
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
    if not ctx.gpu_rows:
        rows.append(skipped("decode", f"nvJPEG, batch {ctx.args.batch}"))
    else:
        dec = ctx.torch_decoder()
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

    def read(tile_reader: str, threads: int, decoder: Any) -> int:
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
        # interleaved rounds of (decode the same stored tiles, read), medians of each: a noisy
        # or loaded machine slows both sides alike, and one lucky run on either side (what a
        # best-of would keep) does not decide the ratio
        dec_s, hot_s, read_s, n = [], [], [], 0
        for _ in range(ctx.args.rounds):
            dec_s.append(decode_seconds(streams, threads))
            hot_s.append(decode_seconds(streams, threads, (layout.tile_h, layout.tile_w)))
            t = time.perf_counter()
            n = read("stored", threads, "cpu")
            read_s.append(time.perf_counter() - t)
        key = f"cpu{threads}-paired"
        ctx.limits[key] = stored_mpix / statistics.median(dec_s)
        ctx.limits[key + "-hot"] = stored_mpix / statistics.median(hot_s)
        rows.append(Row("reader", f"stored tiles, cpu decoder, {threads} threads", n,
                        statistics.median(read_s), n * out_mpix_per_tile, limit_key=key))
        rows.append(Row("reader", f"  same ÷ decode into one reused buffer, {threads} thr.", n,
                        statistics.median(read_s), n * out_mpix_per_tile,
                        limit_key=key + "-hot"))
    if not ctx.gpu_rows:
        rows.append(skipped("reader", "stored tiles, cuda decoder (nvJPEG)"))
    else:
        read("stored", 1, ctx.torch_decoder())  # warm-up
        secs, n = best_of(lambda: read("stored", 1, ctx.torch_decoder()), ctx.args.repeats)
        rows.append(Row("reader", f"stored tiles, torch decoder on {ctx.device}", n, secs,
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
        try:  # a reader missing on the GPU image skips its slide, not the whole run
            wsi = sf.WSI(path, TILE_PX, um, mpp=mpp, use_edge_tiles=True)
        except Exception as exc:  # noqa: BLE001 - reported, the bench goes on
            print(f"  {path.name:42} skipped: {type(exc).__name__}: {str(exc)[:120]}")
            continue
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


def extract_rows(ctx: Context) -> list[Row]:
    """`extract_slide` to a JPEG TFRecord (the reader, the encode pool and the writer
    overlapped); the TFRecord then feeds the models' TFRecord rows."""
    from slideflow.extract import extract_slide

    out = ctx.workdir / "tfrecords"
    threads = max(ctx.args.threads)
    t = time.perf_counter()
    r = extract_slide(ctx.slide, out, TILE_PX, TILE_UM, num_threads=threads)
    secs = time.perf_counter() - t
    if r.status == "failed":
        raise SystemExit(f"TFRecord extraction failed: {r.error}")
    ctx.tfrecord = r.tfrecord
    return [Row("extract", f"extract_slide -> JPEG TFRecord, {threads} threads", r.tiles, secs,
                r.tiles * TILE_PX * TILE_PX / 1e6, limit_key=f"cpu{threads}-paired")]


MODELS = {  # label -> (short key for --models, registry name, build options)
    "EfficientNet-Lite0": ("effnet", "efficientnet_lite0_imagenet", {}),
    "ResNet50": ("resnet50", "resnet50_imagenet", {"pretrained": False}),
    "ViT-L/16 (UNI arch.)": ("vit", "uni", {"pretrained": False}),
}
FALLBACK_VIT = ("timm:vit_large_patch16_224", {"pretrained": False})


def build_model(name: str, options: dict[str, Any], ctx: Context) -> Any:
    kwargs = dict(options, device=ctx.device, batch_size=ctx.args.batch)
    if ctx.cuda:
        kwargs["mixed_precision"] = "bf16"
    try:
        return sf.build_feature_extractor(name, **kwargs)
    except Exception as exc:  # the UNI spec lives in slideflow-noncommercial
        if name != "uni":
            raise
        print(f"# uni not buildable here ({type(exc).__name__}: {exc}); using {FALLBACK_VIT[0]}")
        return sf.build_feature_extractor(FALLBACK_VIT[0], **dict(FALLBACK_VIT[1], **kwargs))


def timed_row(ctx: Context, model: str, what: str, fn: Callable[[], int],
              repeats: int = 1) -> Row:
    """Best of `repeats` calls of `fn` (which returns the tile count), against the model's
    device-resident rate."""
    def call() -> int:
        n = fn()
        ctx.sync()
        return n

    secs, n = best_of(call, repeats)
    return Row(model, what, n, secs, n * TILE_PX * TILE_PX / 1e6, limit_key=f"model:{model}")


def model_rows(ctx: Context) -> list[Row]:
    """Per model: the model on tiles already on the device (the limit), then every way of
    feeding it through the engine, each as a ratio to that limit."""
    import numpy as np
    import torch

    rows: list[Row] = []
    mpix = TILE_PX * TILE_PX / 1e6
    n_host = ctx.args.tiles
    host = np.random.default_rng(0).integers(0, 256, (n_host, TILE_PX, TILE_PX, 3), np.uint8)
    threads = [t for t in ctx.args.threads if t > 1] or ctx.args.threads
    for label, (key, name, options) in MODELS.items():
        if key not in ctx.args.models:
            continue
        ext = build_model(name, options, ctx)
        batch = min(ctx.args.batch, n_host)
        resident = torch.from_numpy(host[:batch]).to(ctx.device).permute(0, 3, 1, 2)
        reps = max(1, n_host // batch)

        def on_device(e=ext, x=resident, r=reps) -> None:
            with torch.inference_mode():
                for _ in range(r):
                    e.forward_preprocessed(e.preprocess(x))
            ctx.sync()

        on_device()  # warm-up (cudnn autotune, allocator, BatchNorm folding)
        secs, _ = best_of(on_device, ctx.args.repeats)
        rows.append(Row(label, "model, tiles on device (preprocess + forward)", reps * batch,
                        secs, reps * batch * mpix))
        ctx.limits[f"model:{label}"] = rows[-1].mpix_per_s

        rows.append(timed_row(ctx, label, "extractor(uint8 numpy batch)",
                              lambda e=ext: len(e(host)), ctx.args.repeats))
        for decoder in ("cpu", "cuda"):
            for t in threads:
                what = f"extractor(wsi), {decoder} decoder, {t} threads"
                if decoder == "cuda" and not ctx.gpu_rows:
                    rows.append(skipped(label, what))
                    continue
                wsi = sf.WSI(ctx.slide, TILE_PX, TILE_UM)
                dec = "cpu" if decoder == "cpu" else ctx.torch_decoder()
                rows.append(timed_row(ctx, label, what, lambda e=ext, w=wsi, t=t, d=dec: len(
                    e(w, num_threads=t, decoder=d).rows)))
                wsi.close()
        for decoder in ("cpu", "nvjpeg"):
            what = f"extractor('x.tfrecords'), {decoder} decoder"
            if decoder == "nvjpeg" and not ctx.gpu_rows:
                rows.append(skipped(label, what))
                continue
            rows.append(timed_row(ctx, label, what,
                                  lambda e=ext, d=decoder: len(e(ctx.tfrecord, decoder=d)[0])))
        print_rows(ctx, rows)
        del ext, resident
        if ctx.cuda:
            torch.cuda.empty_cache()
    return rows


#: sections run in this order
SECTIONS: list[Callable[[Context], list[Row]]] = [fidelity_rows, decoder_rows, reader_rows,
                                                   extract_rows, model_rows]


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


def print_header(ctx: Context) -> None:
    a = ctx.args
    print(f"# {time.strftime('%Y-%m-%d')} | {hardware(ctx.device)} | load {load()} | "
          f"{ctx.slide.name} | {TILE_PX} px / {TILE_UM} um | batch {a.batch} | "
          f"{'bf16' if ctx.cuda else 'fp32'}")
    print(f"| {'section':20} | {'what':50} | {'tiles':>6} | {'tiles/s':>8} | {'MPix/s':>7} | "
          f"{'vs limit':>8} |")
    print(f"|{'-' * 22}|{'-' * 52}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 10}|", flush=True)


def print_rows(ctx: Context, rows: list[Row]) -> None:
    """Rows not yet printed, as soon as they are measured (a slow model never hides the rest)."""
    if rows and not ctx.header_done:
        print_header(ctx)
        ctx.header_done = True
    for r in rows:
        if r.printed:
            continue
        r.printed = True
        if r.note:
            print(f"| {r.section:20} | {r.name:50} | {r.note:>37} |")
            continue
        lim = ctx.limits.get(r.limit_key or "")
        ratio = f"{r.mpix_per_s / lim:8.2f}" if lim else " " * 8
        print(f"| {r.section:20} | {r.name:50} | {r.tiles:6d} | {r.tiles_per_s:8.0f} | "
              f"{r.mpix_per_s:7.1f} | {ratio} |", flush=True)


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> list[Row]:
    global TILE_PX, TILE_UM
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (dry run)")
    ap.add_argument("--quick", action="store_true",
                    help="CPU dry run sizes: --size 900 --batch 8 --tiles 16 --repeats 1")
    ap.add_argument("--size", type=int, default=10000, help="side of the synthetic pyramid")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="CPU thread counts (default: 1, 4, usable cores)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tiles", type=int, default=2048, help="tiles for the model's batch rows")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpu-rows-on-cpu", action="store_true",
                    help="rehearse the CUDA-only rows with torch's CPU decoders (checks the "
                         "code paths before a GPU session; their rates mean nothing)")
    ap.add_argument("--rounds", type=int, default=7,
                    help="interleaved decode/read rounds for the reader rows (medians)")
    ap.add_argument("--max-tiles", type=int, default=None, help="cap for decoder rows")
    ap.add_argument("--tile", type=float, nargs=2, metavar=("PX", "UM"), default=None,
                    help=f"tile size and microns (default {TILE_PX} {TILE_UM}: as-is level 0; "
                         "e.g. 224 128 reads 256-px regions area-resized to 224 px)")
    ap.add_argument("--models", nargs="+", default=[v[0] for v in MODELS.values()],
                    choices=[v[0] for v in MODELS.values()])
    ap.add_argument("--sections", nargs="+", default=None,
                    choices=[f.__name__.removesuffix("_rows") for f in SECTIONS],
                    help="run only these sections (model rows need extract)")
    args = ap.parse_args(argv)
    if args.tile:
        TILE_PX, TILE_UM = int(args.tile[0]), args.tile[1]
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.quick:
        args.size, args.batch, args.tiles, args.repeats, args.rounds = 900, 8, 16, 1, 1
    cores = usable_cores()
    args.threads = args.threads or sorted({1, min(4, cores), cores})
    cache = Path(os.environ.get("SLIDEFLOW_BENCH_CACHE", tempfile.gettempdir()))
    cache.mkdir(parents=True, exist_ok=True)
    slide = make_pyramid(cache / f"sf_bench_{args.size}.tif", args.size, args.size)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(args, slide, args.device, workdir=Path(tmp))
        rows: list[Row] = []
        for section in SECTIONS:
            if args.sections is None or section.__name__.removesuffix("_rows") in args.sections:
                new = section(ctx)
                print_rows(ctx, new)
                rows.extend(new)
        print(f"# {time.perf_counter() - t0:.0f} s in all, load {load()} at the end")
    return rows


if __name__ == "__main__":
    main()
