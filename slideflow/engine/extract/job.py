"""Extract one slide: open it with the tile selection, run the engine into a TFRecord sink.

`extract_job` never raises for a bad slide (the result says why it failed) and follows the
sidecar contract of `.sidecar`: `complete: false` before the TFRecord is touched, results last.
Records follow `wsi.coords` order (row-major) unless `shuffle`; `max_tiles` keeps a seeded
random subset (still in row-major order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import NoTissueError, ROIError, SlideflowError, exception_text
from ...io import imgcodec
from ...io.atomic import discard, disk_full_text, write_json_atomic
from ...io.identity import content_check
from ...io.location import slide_path as slide_path_of
from ...io.locks import SlideLock
from ...io.names import check_output_name, confined
from ...io.npz import index_path_for
from ...io.tfrecord import build_index, read_index
from ...remote.url import safe_url
from ...slide import slide_name
from ...slide.geometry import TileGeometry
from ...slide.passthrough import wsi_passthrough_plan, wsi_passthrough_tiles
from ...version import __version__
from ..outcome import SlideOutcome, Status
from ..pipeline import run
from ..selection import open_wsi
from .sidecar import (
    ExtractJob,
    ExtractOptions,
    check_existing,
    read_sidecar,
    remove_leftovers,
    sidecar_path,
)
from .writer import Stopped, TFRecordSink

log = logging.getLogger("slideflow")


def _select(n: int, opt: ExtractOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices of the kept tiles in read order, write permutation or None)."""
    rng = np.random.default_rng(opt.seed)
    idx = np.arange(n)
    if opt.max_tiles is not None and n > opt.max_tiles:
        idx = np.sort(rng.choice(n, int(opt.max_tiles), replace=False))
    order = rng.permutation(len(idx)) if opt.shuffle else None
    return idx, order


def extract_job(job: ExtractJob, geometry: TileGeometry, opt: ExtractOptions, *,
                encode_pool: ThreadPoolExecutor, encode_threads: int | None = None,
                read_threads: int | None = None, progress: Any = None,
                stop: threading.Event | None = None, preview_width: int | None = 256
                ) -> SlideOutcome:
    """Extract one slide; never raises for a bad slide (the result says why it failed)."""
    t_start = time.perf_counter()
    tile_px, tile_um = geometry.tile_px, geometry.tile_um
    res = SlideOutcome(job.name, Status.FAILED, tfrecord=job.tfrecord)
    try:
        check_output_name(job.name, "slide name")
        confined(job.outdir, job.tfrecord)
        if job.mask is not None:  # this slide's tissue mask replaces the QC method
            opt = dataclasses.replace(opt, qc=str(job.mask))
        request = opt.request(tile_px, tile_um, job.slide_path, job.mpp, job.roi)
        # a finished slide is reused without taking its lock (read-only storage works)
        if opt.skip_extracted and _reused(job, request, opt, res):
            return res
        with SlideLock(job.outdir, job.name) as lock:  # other processes skip this slide
            if not lock.acquired:
                res.status, res.reason = Status.BUSY, f"locked by {lock.holder()}"
                return res
            if lock.took_over:
                res.notes.append(f"took over the stale lock of {lock.took_over}")
            if opt.skip_extracted and _reused(job, request, opt, res):  # finished meanwhile
                return res
            for p in remove_leftovers(job):
                res.notes.append(f"removed {p.name} left by a dead run")
            why = check_existing(job, request, opt.save_tiles)[1]
            if job.tfrecord.exists():
                log.info("%s: extracting again: %s", job.name,
                         why if opt.skip_extracted else "skip_extracted=False")
            res.reason = why if opt.skip_extracted else "skip_extracted=False"
            _extract(job, tile_px, tile_um, opt, request, res, encode_pool, encode_threads,
                     read_threads, progress, stop, preview_width)
            res.status = Status.DONE
    except Stopped:
        raise
    except Exception as exc:  # one bad slide never stops the batch
        full = disk_full_text(exc, job.outdir)
        res.fail(*(("OSError", full) if full else (type(exc).__name__, exception_text(exc))))
        # the progress line and the caller's summary report it (once)
        log.debug("%s: failed (%s)", job.name, res.message, exc_info=True)
    finally:
        res.seconds = time.perf_counter() - t_start
    return res


def _reused(job: ExtractJob, request: dict[str, Any], opt: ExtractOptions,
            res: SlideOutcome) -> bool:
    """Fill `res` as reused when the slide's outputs are current (dead runs' temporary files
    of the slide are removed on the way: never a live process's)."""
    reuse, why = check_existing(job, request, opt.save_tiles)
    if not reuse:
        return False
    for p in remove_leftovers(job):
        res.notes.append(f"removed {p.name} left by a dead run")
    meta = read_sidecar(job.tfrecord) or {}
    res.status, res.reason = Status.REUSED, why
    res.tiles = int(meta.get("tiles") or _count(job.tfrecord))
    if "another tool" in why:
        res.warnings.append(why)
    return True


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
             request: dict[str, Any], res: SlideOutcome, encode_pool: ThreadPoolExecutor,
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
        side = sidecar_path(job.tfrecord)
        old_sidecar = side.read_text() if side.exists() else None
        old_file = _stat(job.tfrecord)
        write_json_atomic(side, {"complete": False, "slide": job.name, "request": request})
        try:
            n, loose = _write_tiles(job, wsi, coords, order, opt, res, encode_pool,
                                    encode_threads, read_threads, progress, stop)
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
                "slide_path": safe_url(str(job.slide_path)), "wsi": wsi.settings(),
                "tfrecord_bytes": job.tfrecord.stat().st_size,
                "tfrecord_content": content_check(job.tfrecord),
                "tiles_saved": bool(opt.save_tiles),
                "passthrough": res.info.get("passthrough"),
                "slideflow_version": __version__,
            }
            write_json_atomic(side, json.loads(json.dumps(meta, default=str)))  # metadata LAST
        except BaseException:
            if _stat(job.tfrecord) == old_file:  # old TFRecord untouched: old sidecar still true
                if old_sidecar is None:
                    side.unlink(missing_ok=True)
                else:
                    with contextlib.suppress(OSError, ValueError):
                        write_json_atomic(side, json.loads(old_sidecar))
            else:  # ours, moved in but never described (e.g. the disk filled up): not kept
                for p in (job.tfrecord, index_path_for(job.tfrecord), side):
                    discard(p)
            raise
    finally:
        wsi.close()


def _write_tiles(job: ExtractJob, wsi: Any, coords: np.ndarray, order: np.ndarray | None,
                 opt: ExtractOptions, res: SlideOutcome, encode_pool: ThreadPoolExecutor,
                 encode_threads: int | None, read_threads: int | None, progress: Any,
                 stop: threading.Event | None) -> tuple[int, Path | None]:
    """The engine in its extraction configuration: slide reader -> normaliser -> TFRecord sink.

    Returns the record count (the TFRecord and its index are in place) and the temporary
    folder of loose tiles (None unless save_tiles), which the caller moves into place.
    """
    sink = TFRecordSink(job.tfrecord, job.name, int(wsi.full_extract_px) // 2, opt.img_format,
                        int(opt.jpeg_quality), pool=encode_pool,
                        chunks=encode_threads or imgcodec.default_threads(), order=order,
                        tiles_dir=job.tiles_dir if opt.save_tiles else None,
                        progress=progress, stop=stop)
    why = opt.passthrough_blocker()
    plan = wsi_passthrough_plan(wsi, coords) if why is None else None
    why = why or plan.why_not
    res.info["passthrough"] = _passthrough_record(plan, why, len(coords))
    if why is not None:
        log.info("%s: no stored-JPEG passthrough: %s", job.name, why)
    try:
        with sink:
            if why is None:
                source = wsi_passthrough_tiles(wsi, plan, coords, opt.batch_size, read_threads)
            else:
                source = wsi.tiles(batch_size=opt.batch_size, num_threads=read_threads,
                                   coords=coords)
            stats = run(source, sink, normalizer=opt.normalizer)
    finally:
        res.timings.update(sink.timings)
    res.timings["read"] = stats.wait_seconds
    res.timings["normalize"] = stats.normalize_seconds
    return sink.n, sink.loose


def _passthrough_record(plan: Any, why: str | None, n: int) -> dict[str, Any]:
    """What the sidecar and the report say about stored-JPEG passthrough for one slide."""
    if why is not None:
        return {"tiles": 0, "of": n, "why_not": why}
    rec: dict[str, Any] = {"tiles": plan.count, "of": n}
    if plan.fallback_reasons:
        rec["re_encoded"] = dict(plan.fallback_reasons)
    return rec


def extract_slide(slide_path: str | os.PathLike, outdir: str | os.PathLike,
                  tile_px: int | TileGeometry, tile_um: float | str | None = None, *, name: str | None = None, rois: str | os.PathLike | None = None,
                  mpp: float | None = None, tiles_dir: str | os.PathLike | None = None,
                  num_threads: int | None = None, **options: Any) -> SlideOutcome:
    """Extract one slide to `<outdir>/<name>.tfrecords` (no label folder is added).

    `options` are those of `ExtractOptions` (qc, img_format, max_tiles, ...). Loose tiles
    (`save_tiles=True`) go to `<tiles_dir>/<name>/`.
    """
    geometry = TileGeometry.parse(tile_px, tile_um)
    opt = ExtractOptions(**options)
    path = slide_path_of(slide_path)  # a URL stays a str
    job = ExtractJob(name or slide_name(path), path, Path(outdir),
                     Path(tiles_dir) if tiles_dir else None,
                     Path(rois) if rois else None, mpp)
    threads = num_threads or imgcodec.default_threads()
    with ThreadPoolExecutor(threads, thread_name_prefix="sf-encode") as pool:
        return extract_job(job, geometry, opt, encode_pool=pool, encode_threads=threads,
                           read_threads=threads, preview_width=None)
