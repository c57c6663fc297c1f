"""Tile extraction: slides -> `<label>/<slide>.tfrecords` + `.index.npz` + `.extract.json`.

One slide (`extract_slide`) or a whole Dataset (`extract_dataset`, behind
`Dataset.extract_tiles`). Per slide: open the WSI, apply QC / ROIs / background filters, read
tiles in `wsi.coords` order (batched region reads in the slide layer's thread pool), encode
them in a shared thread pool (simplejpeg and OpenCV release the GIL) and append them to a
`TFRecordWriter`, which writes under a temporary name and renames when complete.

Resume: every slide has a sidecar `<slide>.extract.json`. It is written (atomically) as
`complete: false` before a slide's TFRecord is touched and rewritten with the results LAST,
after the TFRecord and its index are in place. `skip_extracted` reuses a TFRecord only when its
sidecar is complete and its recorded request equals the current one; otherwise the slide is
redone and the log says why. A TFRecord with no sidecar at all was made by another tool
(e.g. Slideflow itself) and is kept as is. So a killed run never leaves a TFRecord that is
taken for finished, and the rerun completes it with the same bytes as an uninterrupted run.

Records follow `wsi.coords` order (row-major) unless `shuffle`; `max_tiles` keeps a seeded
random subset (still in row-major order). `loc_x`/`loc_y` are tile CENTRES in level-0 px
(top-left + full_extract_px // 2), as in Slideflow; loose tiles (`save_tiles`) are named
`<slide>-<loc_x>-<loc_y>.<fmt>` with the same centre coordinates, as Slideflow 3 does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NoTissueError, ROIError, SlideflowError
from .io import imgcodec
from .io.atomic import tmp_prefix, write_json_atomic
from .io.locks import SlideLock, clean_stale_temps
from .io.tfrecord import TFRecordWriter, build_index, get_tfrecord_label, read_index
from .norm import resolve
from .progress import track_slides
from .report import summary_table_html, write_report
from .selection import TileSelection, open_wsi
from .slide import slide_name
from .slide.geometry import check_tile_geometry
from .validate import optional_positive_int, positive_int
from .version import __version__

log = logging.getLogger("slideflow")

FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".extract.json"


def sidecar_path(tfrecord: str | os.PathLike) -> Path:
    """`<dir>/<slide>.extract.json` for `<dir>/<slide>.tfrecords`."""
    tfrecord = Path(tfrecord)
    name = tfrecord.name[: -len(".tfrecords")] if tfrecord.name.endswith(".tfrecords") \
        else tfrecord.stem
    return tfrecord.with_name(name + SIDECAR_SUFFIX)


def read_sidecar(tfrecord: str | os.PathLike) -> dict[str, Any] | None:
    """The extraction sidecar of a TFRecord, or None when absent or unreadable."""
    try:
        return json.loads(sidecar_path(tfrecord).read_text())
    except (OSError, ValueError):
        return None


def is_incomplete(tfrecord: str | os.PathLike) -> bool:
    """True when the sidecar says an extraction of this slide started and did not finish."""
    meta = read_sidecar(tfrecord)
    return meta is not None and not meta.get("complete", False)


# --------------------------------------------------------------------------- options


@dataclass
class ExtractOptions(TileSelection):
    """Everything that decides which tiles are written and how (plus how fast)."""

    img_format: str = "jpg"
    jpeg_quality: int = 100
    normalizer: Any = None
    save_tiles: bool = False
    max_tiles: int | None = None
    shuffle: bool = False
    seed: int = 0
    skip_extracted: bool = True
    batch_size: int = 64
    report: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        fmt = str(self.img_format).lower()
        if fmt not in ("jpg", "jpeg", "png"):
            raise ValueError(f"img_format must be 'jpg' or 'png', got {self.img_format!r}")
        self.img_format = "jpg" if fmt == "jpeg" else fmt
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        self.max_tiles = optional_positive_int(self.max_tiles, "max_tiles")
        self.batch_size = positive_int(self.batch_size, "batch_size")
        self.normalizer = resolve(self.normalizer)

    def normalizer_config(self) -> Any:
        n = self.normalizer
        if n is None:
            return None
        if hasattr(n, "to_config"):
            return n.to_config()
        return {"class": type(n).__name__}

    def request(self, tile_px: int, tile_um: Any, slide_path: Path, mpp: float | None,
                roi: Path | None) -> dict[str, Any]:
        """What a finished TFRecord must have been made with to be reused (JSON-normalised)."""
        req = {
            "format_version": FORMAT_VERSION,
            "tile_px": int(tile_px), "tile_um": tile_um, "stride_div": int(self.stride_div),
            "use_edge_tiles": bool(self.use_edge_tiles), "backend": self.backend,
            "mpp_override": mpp,
            **self.request_record(),
            "roi_method": self.roi_method, "roi_filter_method": self.roi_filter_method,
            "roi_file": _file_digest(roi) if roi is not None else None,
            "img_format": self.img_format,
            "jpeg_quality": int(self.jpeg_quality) if self.img_format == "jpg" else None,
            "normalizer": self.normalizer_config(),
            "max_tiles": self.max_tiles, "shuffle": bool(self.shuffle),
            "seed": self.seed if (self.shuffle or self.max_tiles) else None,
            "slide_file": {"name": slide_path.name, "bytes": _size(slide_path)},
        }
        return json.loads(json.dumps(req, sort_keys=True, default=str))


def _size(path: Path) -> int:
    if path.is_dir():  # DICOM folder
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _file_digest(path: Path) -> dict[str, Any]:
    return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# --------------------------------------------------------------------------- results


@dataclass
class SlideResult:
    """What happened to one slide: status 'done', 'skipped' (reused) or 'failed'."""

    slide: str
    status: str
    tiles: int = 0
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None
    tfrecord: Path | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    preview_png: bytes | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"slide": self.slide, "status": self.status, "tiles": self.tiles,
                "seconds": round(self.seconds, 3), "error": self.error, "reason": self.reason,
                "tfrecord": str(self.tfrecord) if self.tfrecord else None,
                "warnings": list(self.warnings)}


@dataclass
class ExtractionSummary:
    """Per-slide results of an extraction run; `summary['slide'].tiles`, `.to_df()`."""

    tile_px: int
    tile_um: Any
    results: dict[str, SlideResult] = field(default_factory=dict)
    seconds: float = 0.0
    reports: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return get_tfrecord_label(self.tile_px, self.tile_um)

    def _with(self, status: str) -> list[str]:
        return [k for k, r in self.results.items() if r.status == status]

    @property
    def done(self) -> list[str]:
        return self._with("done")

    @property
    def skipped(self) -> list[str]:
        return self._with("skipped")

    @property
    def failed(self) -> dict[str, str]:
        return {k: r.error or "" for k, r in self.results.items() if r.status == "failed"}

    @property
    def tiles(self) -> int:
        """Tiles written in this run (reused slides not counted)."""
        return sum(r.tiles for r in self.results.values() if r.status == "done")

    def __getitem__(self, slide: str) -> SlideResult:
        return self.results[slide]

    def __iter__(self):
        return iter(self.results.values())

    def __len__(self) -> int:
        return len(self.results)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: r.as_dict() for k, r in self.results.items()}

    def to_df(self):
        import pandas as pd

        return pd.DataFrame([r.as_dict() for r in self.results.values()])

    def __repr__(self) -> str:
        rate = self.tiles / self.seconds if self.seconds else 0.0
        return (f"ExtractionSummary({self.label}: {len(self.done)} extracted, "
                f"{len(self.skipped)} reused, {len(self.failed)} failed; {self.tiles} tiles in "
                f"{self.seconds:.1f} s, {rate:.0f} tiles/s)")

    def _repr_html_(self) -> str:
        return summary_table_html(self)


# --------------------------------------------------------------------------- one slide


@dataclass
class ExtractJob:
    """One slide to extract into `outdir` (the TFRecord label folder)."""

    name: str
    slide_path: Path
    outdir: Path
    tiles_dir: Path | None = None  # loose tiles go to tiles_dir/<name>/
    roi: Path | None = None
    mpp: float | None = None

    @property
    def tfrecord(self) -> Path:
        return self.outdir / f"{self.name}.tfrecords"


class _Stopped(Exception):
    """Raised inside a slide worker when the run is being cancelled."""


def check_existing(job: ExtractJob, request: dict[str, Any], save_tiles: bool
                   ) -> tuple[bool, str]:
    """(reuse?, why) for a slide's existing outputs."""
    tfr = job.tfrecord
    meta = read_sidecar(tfr)
    if not tfr.exists():
        interrupted = meta is not None and not meta.get("complete")
        return False, "a previous extraction was interrupted" if interrupted else \
            "not extracted yet"
    if meta is None:
        if sidecar_path(tfr).exists():
            return False, f"{sidecar_path(tfr).name} is unreadable"
        return True, ("TFRecord has no .extract.json (made by another tool?), kept as is; "
                      "pass skip_extracted=False to re-extract it")
    if not meta.get("complete"):
        return False, "a previous extraction was interrupted"
    if meta.get("request") != request:
        old = meta.get("request") or {}
        keys = sorted(k for k in set(old) | set(request) if old.get(k) != request.get(k))
        return False, f"settings changed ({', '.join(keys)})"
    if tfr.stat().st_size != meta.get("tfrecord_bytes"):
        return False, "the TFRecord's size differs from the recorded one"
    try:
        n = len(read_index(tfr))
    except (FileNotFoundError, SlideflowError):
        try:
            n = len(build_index(tfr))
        except SlideflowError as exc:
            return False, f"the TFRecord is corrupt ({exc})"
    if n != meta.get("tiles"):
        return False, f"the index holds {n} records, the sidecar {meta.get('tiles')}"
    if save_tiles and job.tiles_dir is not None and not (job.tiles_dir / job.name).is_dir():
        return False, "loose tiles were requested and are missing"
    return True, "already extracted with the same settings"


def _remove_leftovers(job: ExtractJob) -> None:
    """Temporary files of dead runs for this slide (never those of a live process)."""
    clean_stale_temps(job.outdir, job.name)
    if job.tiles_dir is not None:
        clean_stale_temps(job.tiles_dir, job.name)


def _encode_chunk(tiles: np.ndarray, fmt: str, quality: int) -> tuple[list[bytes], float]:
    t0 = time.perf_counter()
    out = [imgcodec.encode(t, fmt, quality) for t in tiles]
    return out, time.perf_counter() - t0


def _select(n: int, opt: ExtractOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices of the kept tiles in read order, write permutation or None)."""
    rng = np.random.default_rng(opt.seed)
    idx = np.arange(n)
    if opt.max_tiles is not None and n > opt.max_tiles:
        idx = np.sort(rng.choice(n, int(opt.max_tiles), replace=False))
    order = rng.permutation(len(idx)) if opt.shuffle else None
    return idx, order


def extract_job(job: ExtractJob, tile_px: int, tile_um: Any, opt: ExtractOptions, *,
                encode_pool: ThreadPoolExecutor | None = None, encode_threads: int | None = None,
                read_threads: int | None = None, progress: Any = None,
                stop: threading.Event | None = None, preview_width: int | None = 256
                ) -> SlideResult:
    """Extract one slide; never raises for a bad slide (the result says why it failed)."""
    t_start = time.perf_counter()
    res = SlideResult(job.name, "failed", tfrecord=job.tfrecord)
    try:
        request = opt.request(tile_px, tile_um, job.slide_path, job.mpp, job.roi)
        with SlideLock(job.outdir, job.name) as lock:  # other processes skip this slide
            if not lock.acquired:
                res.status, res.reason = "skipped", f"busy: locked by {lock.holder()}"
                return res
            reuse, why = check_existing(job, request, opt.save_tiles)
            if opt.skip_extracted and reuse:
                meta = read_sidecar(job.tfrecord) or {}
                res.status, res.reason = "skipped", why
                res.tiles = int(meta.get("tiles") or _count(job.tfrecord))
                if "another tool" in why:
                    res.warnings.append(why)
                return res
            if job.tfrecord.exists():
                log.info("%s: extracting again: %s", job.name,
                         why if opt.skip_extracted else "skip_extracted=False")
            res.reason = why if opt.skip_extracted else "skip_extracted=False"
            _extract(job, tile_px, tile_um, opt, request, res, encode_pool, encode_threads,
                     read_threads, progress, stop, preview_width)
            res.status = "done"
    except _Stopped:
        raise
    except Exception as exc:  # one bad slide never stops the batch
        res.status, res.error = "failed", f"{type(exc).__name__}: {exc}"
        log.warning("%s: failed (%s)", job.name, res.error)
        log.debug("%s: traceback", job.name, exc_info=True)
    finally:
        res.seconds = time.perf_counter() - t_start
    return res


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _count(tfrecord: Path) -> int:
    try:
        return len(read_index(tfrecord))
    except (FileNotFoundError, SlideflowError):
        return len(build_index(tfrecord, write=False))


def _extract(job: ExtractJob, tile_px: int, tile_um: Any, opt: ExtractOptions,
             request: dict[str, Any], res: SlideResult, encode_pool: ThreadPoolExecutor | None,
             encode_threads: int | None, read_threads: int | None, progress: Any,
             stop: threading.Event | None, preview_width: int | None) -> None:
    t0 = time.perf_counter()
    if opt.roi_method == "inside" and job.roi is None:
        raise ROIError(f"{job.name}: roi_method='inside' but no ROI file <slide>.csv/.geojson "
                       "in the source's roi folder")
    wsi = open_wsi(job.slide_path, tile_px, tile_um, opt, mpp=job.mpp, rois=job.roi)
    try:
        res.info = {"dimensions": list(wsi.dimensions), "mpp": wsi.mpp,
                    "mpp_source": wsi.mpp_source, "backend": wsi.backend, "vendor": wsi.vendor,
                    "full_extract_px": wsi.full_extract_px, "grid_tiles": int(wsi.grid.size),
                    "level": wsi.level_choice.level}
        if wsi.mpp_source == "override":
            res.warnings.append(f"MPP {wsi.mpp:g} given by the user, not read from the file")
        n_kept = len(wsi)
        if wsi.grid.size == 0:
            w, h = wsi.dimensions
            raise NoTissueError(
                f"{job.name}: a tile ({wsi.full_extract_px} level-0 px) is larger than the "
                f"slide ({w}x{h} px) at {wsi.mpp:g} µm/px; check the MPP (mpp column or "
                f"mpp_override) or use a smaller tile_um")
        if n_kept == 0:
            raise NoTissueError(f"{job.name}: no tiles left after QC, ROIs and filters "
                                f"(of {wsi.grid.size} grid tiles)")
        idx, order = _select(n_kept, opt)
        coords = wsi.coords[idx]
        res.timings["open"] = time.perf_counter() - t0
        job.outdir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(job)
        side = sidecar_path(job.tfrecord)
        old_sidecar = side.read_text() if side.exists() else None
        old_file = _stat(job.tfrecord)
        write_json_atomic(side, {"complete": False, "slide": job.name, "request": request})
        try:
            n, loose = _write_tiles(job, wsi, coords, order, opt, res, encode_pool,
                                    encode_threads, read_threads, progress, stop)
        except BaseException:
            if _stat(job.tfrecord) == old_file:  # old TFRecord untouched: old sidecar still true
                if old_sidecar is None:
                    side.unlink(missing_ok=True)
                else:
                    with contextlib.suppress(OSError, ValueError):
                        write_json_atomic(side, json.loads(old_sidecar))
            raise
        if loose is not None:  # the TFRecord is in place: move the loose tiles in too
            final = job.tiles_dir / job.name
            try:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(loose, final)
            finally:
                shutil.rmtree(loose, ignore_errors=True)
        if n < 10:
            res.warnings.append(f"only {n} tiles")
        res.tiles = n
        if preview_width:
            try:
                buf = io.BytesIO()
                # 128-colour PNG: ~40 kB per slide at 256 px, 5x smaller than full RGB
                wsi.preview(width=preview_width).quantize(128).save(buf, format="PNG",
                                                                   optimize=True)
                res.preview_png = buf.getvalue()
            except Exception as exc:  # a picture is never worth failing a slide
                res.warnings.append(f"no preview ({exc})")
        meta = {
            "complete": True, "slide": job.name, "request": request, "tiles": n,
            "tiles_in_grid": int(wsi.grid.size), "tiles_kept": n_kept,
            "full_extract_px": int(wsi.full_extract_px), "mpp": wsi.mpp,
            "mpp_source": wsi.mpp_source, "tile_px": int(tile_px), "tile_um": tile_um,
            "slide_path": str(job.slide_path), "wsi": wsi.settings(),
            "tfrecord_bytes": job.tfrecord.stat().st_size, "tiles_saved": bool(opt.save_tiles),
            "slideflow_version": __version__,
        }
        write_json_atomic(side, json.loads(json.dumps(meta, default=str)))  # metadata LAST
    finally:
        wsi.close()


def _write_tiles(job: ExtractJob, wsi: Any, coords: np.ndarray, order: np.ndarray | None,
                 opt: ExtractOptions, res: SlideResult, encode_pool: ThreadPoolExecutor | None,
                 encode_threads: int | None, read_threads: int | None, progress: Any,
                 stop: threading.Event | None) -> tuple[int, Path | None]:
    """Read, encode and write every tile.

    Returns the record count (the TFRecord and its index are in place) and the temporary
    folder of loose tiles (None unless save_tiles), which the caller moves into place.
    """
    half = int(wsi.full_extract_px) // 2
    fmt, quality = opt.img_format, int(opt.jpeg_quality)
    chunks = max(1, encode_threads or imgcodec.default_threads())
    own_pool = encode_pool is None
    pool = encode_pool or ThreadPoolExecutor(chunks, thread_name_prefix="sf-encode")
    timing = {"read": 0.0, "normalize": 0.0, "encode": 0.0, "write": 0.0}
    loose: Path | None = None
    if opt.save_tiles and job.tiles_dir is not None:
        job.tiles_dir.mkdir(parents=True, exist_ok=True)
        loose = Path(tempfile.mkdtemp(prefix=tmp_prefix(job.name), dir=job.tiles_dir))
    unordered = None
    if order is not None:  # shuffled: stage encoded tiles in read order, then write permuted
        fd, name = tempfile.mkstemp(prefix=tmp_prefix(f"{job.name}.unordered"), dir=job.outdir)
        unordered = (os.fdopen(fd, "w+b"), Path(name), [])
    n = 0
    try:
        with TFRecordWriter(job.tfrecord) as writer:

            def flush(item: tuple[np.ndarray, list[Future]]) -> None:
                nonlocal n
                centres, futs = item
                encoded: list[bytes] = []
                for f in futs:
                    data, secs = f.result()
                    encoded.extend(data)
                    timing["encode"] += secs
                t = time.perf_counter()
                for data, (cx, cy) in zip(encoded, centres.tolist()):
                    if unordered is not None:
                        fh, _, index = unordered
                        index.append((fh.tell(), len(data), cx, cy))
                        fh.write(data)
                    else:
                        writer.write(data, job.name, cx, cy)
                    if loose is not None:
                        (loose / f"{job.name}-{cx}-{cy}.{fmt}").write_bytes(data)
                n += len(encoded)
                timing["write"] += time.perf_counter() - t
                if progress is not None:
                    progress.advance_tiles(len(encoded))

            pending: deque[tuple[np.ndarray, list[Future]]] = deque()
            batches = wsi.tiles(batch_size=opt.batch_size, num_threads=read_threads,
                                coords=coords)
            try:
                while True:
                    t = time.perf_counter()
                    try:
                        tiles, tl = next(batches)
                    except StopIteration:
                        break
                    timing["read"] += time.perf_counter() - t
                    if stop is not None and stop.is_set():
                        raise _Stopped(job.name)
                    if opt.normalizer is not None:
                        t = time.perf_counter()
                        tiles = np.ascontiguousarray(opt.normalizer.transform(tiles), np.uint8)
                        timing["normalize"] += time.perf_counter() - t
                    step = -(-len(tiles) // chunks)
                    futs = [pool.submit(_encode_chunk, tiles[a:a + step], fmt, quality)
                            for a in range(0, len(tiles), step)]
                    pending.append((tl + half, futs))
                    if len(pending) > 2:
                        flush(pending.popleft())
                while pending:
                    flush(pending.popleft())
            finally:
                batches.close()
                for _, futs in pending:
                    for f in futs:
                        f.cancel()
            if unordered is not None:
                t = time.perf_counter()
                fh, _, index = unordered
                fh.flush()
                for k in order:
                    off, length, cx, cy = index[k]
                    writer.write(os.pread(fh.fileno(), length, off), job.name, cx, cy)
                timing["write"] += time.perf_counter() - t
    except BaseException:
        if loose is not None:
            shutil.rmtree(loose, ignore_errors=True)
        raise
    finally:
        if unordered is not None:
            unordered[0].close()
            unordered[1].unlink(missing_ok=True)
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
        res.timings.update(timing)
    return n, loose


def extract_slide(slide_path: str | os.PathLike, outdir: str | os.PathLike, tile_px: int,
                  tile_um: Any, *, name: str | None = None, rois: str | os.PathLike | None = None,
                  mpp: float | None = None, tiles_dir: str | os.PathLike | None = None,
                  num_threads: int | None = None, **options: Any) -> SlideResult:
    """Extract one slide to `<outdir>/<name>.tfrecords` (no label folder is added).

    `options` are those of `ExtractOptions` (qc, img_format, max_tiles, ...). Loose tiles
    (`save_tiles=True`) go to `<tiles_dir>/<name>/`.
    """
    tile_px, tile_um, _ = check_tile_geometry(tile_px, tile_um)
    opt = ExtractOptions(**options)
    path = Path(slide_path)
    job = ExtractJob(name or slide_name(path), path, Path(outdir),
                     Path(tiles_dir) if tiles_dir else None,
                     Path(rois) if rois else None, mpp)
    threads = num_threads or imgcodec.default_threads()
    with ThreadPoolExecutor(threads, thread_name_prefix="sf-encode") as pool:
        return extract_job(job, tile_px, tile_um, opt, encode_pool=pool, encode_threads=threads,
                           read_threads=threads, preview_width=None)


# --------------------------------------------------------------------------- many slides


def run_jobs(jobs: Sequence[ExtractJob], tile_px: int, tile_um: Any, opt: ExtractOptions, *,
             num_threads: int | None = None, slides_in_flight: int | None = None,
             progress: bool | None = True, failed: dict[str, str] | None = None,
             on_result: Callable[[SlideResult], None] | None = None) -> ExtractionSummary:
    """Extract `jobs` with a few slides in flight; `failed` are slides known to be unusable."""
    start = time.perf_counter()
    tile_px, tile_um, _ = check_tile_geometry(tile_px, tile_um)  # once, not once per slide
    summary = ExtractionSummary(int(tile_px), tile_um)
    total = len(jobs) + len(failed or {})
    threads = max(1, num_threads or imgcodec.default_threads())
    in_flight = max(1, min(slides_in_flight or 2, len(jobs) or 1, threads))
    read_threads = max(1, threads // in_flight)
    stop = threading.Event()
    with track_slides(total, f"extract {summary.label}", enabled=progress) as bar:
        for name, why in (failed or {}).items():
            summary.results[name] = SlideResult(name, "failed", error=why)
            bar.slide_failed(name, why)
        encode_pool = ThreadPoolExecutor(threads, thread_name_prefix="sf-encode")
        slide_pool = ThreadPoolExecutor(in_flight, thread_name_prefix="sf-slide")
        try:
            queue = list(jobs)
            running: dict[Future, ExtractJob] = {}
            while queue or running:
                while queue and len(running) < in_flight:
                    job = queue.pop(0)
                    fut = slide_pool.submit(extract_job, job, tile_px, tile_um, opt,
                                            encode_pool=encode_pool, encode_threads=threads,
                                            read_threads=read_threads,
                                            progress=bar, stop=stop,
                                            preview_width=256 if opt.report else None)
                    running[fut] = job
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    running.pop(fut)
                    r = fut.result()  # only interrupts (KeyboardInterrupt, _Stopped) raise here
                    summary.results[r.slide] = r
                    if r.status == "done":
                        bar.slide_done(r.slide, r.tiles)
                    elif r.status == "skipped":
                        bar.slide_skipped(r.slide, r.reason or "")
                    else:
                        bar.slide_failed(r.slide, r.error or "")
                    if on_result is not None:
                        on_result(r)
        except BaseException:
            stop.set()  # running slides stop at their next batch and discard their temp files
            raise
        finally:
            slide_pool.shutdown(wait=True, cancel_futures=True)
            encode_pool.shutdown(wait=True, cancel_futures=True)
    order = {j.name: i for i, j in enumerate(jobs)}
    summary.results = dict(sorted(summary.results.items(),
                                  key=lambda kv: (order.get(kv[0], -1), kv[0])))
    summary.seconds = time.perf_counter() - start
    return summary


def extract_dataset(dataset: Any, *, num_threads: int | None = None,
                    slides_in_flight: int | None = None, progress: bool | None = True,
                    mpp_override: float | dict[str, float] | None = None,
                    **options: Any) -> ExtractionSummary:
    """Extract every slide of a Dataset into its sources' TFRecord folders (+ reports)."""
    opt = ExtractOptions(**options)
    label = get_tfrecord_label(dataset.tile_px, dataset.tile_um)
    jobs: list[ExtractJob] = []
    failed: dict[str, str] = {}
    existing = dataset.tfrecords(include_incomplete=True, as_dict=True)
    ann_mpp = dataset.annotation_mpp()
    paths = dataset.slide_paths(as_dict=True)
    for name, src in dataset.slide_sources().items():
        if src.tfrecords is None:
            failed[name] = f"source {src.name!r} has no 'tfrecords' folder in datasets.json"
            continue
        path = paths.get(name)
        if path is None:
            if name not in existing:
                failed[name] = (f"slide file not found in the slides folder of source "
                                f"{src.name!r} ({src.slides})")
            continue
        if isinstance(mpp_override, dict):
            mpp = mpp_override.get(name, ann_mpp.get(name))
        else:
            mpp = mpp_override if mpp_override is not None else ann_mpp.get(name)
        tiles_dir = (src.tiles / label) if (opt.save_tiles and src.tiles) else None
        if opt.save_tiles and src.tiles is None:
            log.warning("source %s has no 'tiles' folder; loose tiles are not saved", src.name)
        jobs.append(ExtractJob(name, path, src.tfrecords / label, tiles_dir, src.roi_file(name),
                               float(mpp) if mpp is not None else None))
    if not jobs and not failed:
        log.warning("no slides to extract (dataset has %d slides)", len(dataset.slides()))
    summary = run_jobs(jobs, dataset.tile_px, dataset.tile_um, opt, num_threads=num_threads,
                       slides_in_flight=slides_in_flight, progress=progress, failed=failed)
    if opt.report:
        by_dir: dict[Path, list[str]] = {}
        for j in jobs:
            by_dir.setdefault(j.outdir, []).append(j.name)
        for outdir, names in by_dir.items():
            summary.reports.append(write_report(outdir / "extraction_report.html", summary,
                                                names, opt))
    return summary
