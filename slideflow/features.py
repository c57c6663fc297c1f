"""Feature bags for MIL: slides or TFRecords -> extractor -> one bag per slide.

`generate_feature_bags` drives the streaming engine (`slideflow.pipeline`) once per slide with a
`BagWriter` sink, writes `bags_config.json` (Slideflow layout + our provenance) and resumes:
a bag is reused only when its recorded settings match the request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, OutputConflictError, SlideflowError, TFRecordError
from .io.bags import bag_path, read_bag_meta
from .io.bags_config import normalize
from .io.base import FORMATS
from .io.identity import file_digest, file_identity, promised_records, tfrecord_identity
from .io.location import is_url, slide_path
from .io.runlog import OutcomeCounts
from .io.tfrecord import check_tile_size
from .model import build_feature_extractor
from .model.extractors.sf3_config import bags_entry
from .norm import autoselect, resolve
from .pipeline import (
    RowCollector,
    default_decoder,
    gpu_decode_device,
    run,
    slide_read_options,
    tfrecord_source,
)
from .selection import DEFAULT_QC, TileSelection, open_wsi
from .slide import slide_name
from .slide.decode_check import decoder_record
from .slide.geometry import check_tile_geometry, make_grid
from .slide.wsi import WSI
from .tfrecord_decode import decoder_record as tfrecord_decoder_record
from .validate import optional_positive_int, positive_int
from .version import __version__

log = logging.getLogger("slideflow")


@dataclass
class SlideJob:
    """One slide to featurise: from its TFRecord when given, else straight from the slide."""

    name: str
    slide_path: Path | None = None
    tfrecord: Path | None = None
    rois: Path | None = None
    mpp: float | None = None
    mask: Path | None = None  # binary tissue-mask image used instead of the QC method
    #: where `mpp` came from ('--mpp', 'manifest', 'mpp-csv', 'annotations'...); None: the
    #: caller's override, or the slide file itself when `mpp` is None
    mpp_source: str | None = None


@dataclass
class BagsReport(OutcomeCounts):
    """What a generate_feature_bags run did, slide by slide (`outcomes`, one
    `bag_runner.SlideOutcome` each); `superseded` maps each folder a forced run moved files
    into (`<outdir>/.superseded-<UTC time>/`) to the files moved."""

    outdir: Path
    seconds: float = 0.0
    outcomes: list[Any] = field(default_factory=list, repr=False)
    superseded: dict[str, list[str]] = field(default_factory=dict)

    def _outcomes(self) -> list[Any]:
        return self.outcomes

    @property
    def done(self) -> dict[str, dict[str, Any]]:
        return {o.slide: {"tiles": o.tiles, "seconds": o.seconds} for o in self.outcomes
                if o.status == "done"}

    @property
    def skipped(self) -> list[str]:
        """Slides whose bags were current (reused)."""
        return self.with_status("reused")

    @property
    def busy(self) -> list[str]:
        """Slides held by another live process: skipped."""
        return self.with_status("busy")

    @property
    def failed(self) -> dict[str, str]:
        return self.failures()

    def __repr__(self) -> str:
        busy = f", {len(self.busy)} busy" if self.busy else ""
        moved = sum(len(v) for v in self.superseded.values())
        aside = f", {moved} stale file(s) moved aside" if moved else ""
        return (f"BagsReport({self.outdir}: {len(self.done)} done, {len(self.skipped)} reused"
                f"{busy}, {len(self.failed)} failed, {self.tiles} tiles in "
                f"{self.seconds:.1f} s{aside})")


def resolve_extractor(extractor: Any, **kwargs: Any) -> Any:
    """An extractor object, building it from a registry name when given a string."""
    if isinstance(extractor, str):
        return build_feature_extractor(extractor, **kwargs)
    return extractor


def resolve_normalizer(normalizer: Any, source: str | Path | None = None) -> Any:
    """A normaliser from Slideflow's ``normalizer=`` / ``normalizer_source=`` pair: the source
    is a preset name ('v1'...'v4') or an image file the method is fitted to."""
    if source is None:
        return resolve(normalizer)
    if not isinstance(normalizer, str):
        raise TypeError("normalizer_source= needs normalizer= as a method name")
    path = Path(source)
    if path.is_file():
        from PIL import Image

        norm = autoselect(normalizer)
        with Image.open(path) as img:
            norm.fit(np.asarray(img.convert("RGB")))
        return norm
    if path.suffix:
        raise FileNotFoundError(f"normalizer_source {source}: no such image")
    return autoselect(normalizer, preset=str(source))


def bags_config(extractor: Any, normalizer: Any, tile_px: int, tile_um: Any,
                selection: TileSelection, fmt: str) -> dict[str, Any]:
    """Slideflow-layout bags_config.json plus a provenance block (ours)."""
    return {
        "extractor": bags_entry(extractor, tile_px) if hasattr(extractor, "spec") else
        extractor.dump_config(),
        "normalizer": normalizer.to_config() if normalizer is not None else None,
        "num_features": int(extractor.num_features),
        "tile_px": int(tile_px),
        "tile_um": tile_um,
        "provenance": {
            "slideflow_version": __version__,
            "extractor": extractor.name,
            "weights_sha256": getattr(extractor, "weights_sha256", None),
            "weights_files": dict(getattr(extractor, "weights_files", None) or {}),
            "precision": getattr(extractor, "precision", "fp32"),
            "license": getattr(extractor, "license", None),
            "format": fmt,
            "tile_selection": selection.selection_dict(),
        },
    }


def _job_source(job: SlideJob, tile_px: int, tile_um: Any, selection: TileSelection,
                batch_size: int, num_threads: int | None, max_tiles: int | None, seed: int,
                extractor: Any = None):
    """(batches iterator, patch_size_level0, slide meta) for one job; coords are top-left.

    Tiles are decoded where `extractor` runs (nvJPEG on CUDA: `default_decoder` for TFRecords,
    `slide_read_options` for slides).
    """
    if job.tfrecord is not None:
        extent = _tfrecord_extent(job, tile_px, tile_um, selection.grid_rule)
        half = extent // 2

        def shifted():
            source = tfrecord_source(job.tfrecord, batch_size, num_threads,
                                     decoder=default_decoder(extractor),
                                     device=gpu_decode_device(extractor))
            for tiles, locs in check_tile_size(source, job.tfrecord):
                yield tiles, np.asarray(locs, np.int64) - half

        return shifted(), extent, {"source": "tfrecord", "tfrecord": str(job.tfrecord),
                                   "tile_selection": _tfrecord_selection(job.tfrecord),
                                   "decoder": tfrecord_decoder_record(
                                       job.tfrecord, gpu_decode_device(extractor))}
    wsi = _open_job_wsi(job, tile_px, tile_um, selection)
    coords = wsi.coords
    if max_tiles is not None and len(coords) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(coords), max_tiles, replace=False))
        coords = coords[keep]
    chosen = selection.selection_dict()
    if job.mask is not None:  # the manifest's mask replaced the QC method
        chosen["qc"] = str(job.mask)
    read = slide_read_options(extractor)
    meta = {"source": "slide", "slide_path": str(job.slide_path), "mpp": wsi.mpp,
            "tile_selection": chosen,
            "level0_width": wsi.dimensions[0], "level0_height": wsi.dimensions[1],
            "objective_power": wsi.reader.objective_power,
            "level": wsi.level_choice.level, "read_px": wsi.level_choice.read_px,
            "decoder": decoder_record(wsi, read.get("decoder", "cpu"))}
    return wsi.tiles(batch_size=batch_size, num_threads=num_threads, coords=coords,
                     **read), wsi.full_extract_px, meta


def _open_job_wsi(job: SlideJob, tile_px: int, tile_um: Any, selection: TileSelection):
    if job.mask is None:
        return open_wsi(job.slide_path, tile_px, tile_um, selection, mpp=job.mpp, rois=job.rois)
    from dataclasses import replace

    wsi = open_wsi(job.slide_path, tile_px, tile_um, replace(selection, qc=None), mpp=job.mpp,
                   rois=job.rois)
    try:  # the mask replaces QC; background filters stay
        wsi.qc(str(job.mask), threshold=selection.qc_threshold)
    except BaseException:
        wsi.close()
        raise
    return wsi


def _tfrecord_selection(tfrecord: Path) -> dict[str, Any] | None:
    """The tile selection a TFRecord was extracted with (its sidecar's request), or None."""
    from .extract.sidecar import read_sidecar
    from .selection import _RECORD_ORDER

    side = read_sidecar(tfrecord) or {}
    req = side.get("request") or side.get("settings") or {}
    found = {k: req[k] for k in _RECORD_ORDER if k in req}
    return found or None


def _tfrecord_extent(job: SlideJob, tile_px: int, tile_um: Any, grid_rule: str) -> int:
    """Tile extent in level-0 px for a TFRecord: from its extraction sidecar, else the slide."""
    sidecar = job.tfrecord.with_suffix(".extract.json") if job.tfrecord else None
    if sidecar is not None and sidecar.exists():
        meta = json.loads(sidecar.read_text())
        extent = meta.get("full_extract_px") or meta.get("settings", {}).get("full_extract_px")
        if extent:
            return int(extent)
    if job.slide_path is not None:
        mpp = job.mpp or WSI(job.slide_path, tile_px, tile_um, mpp=job.mpp).mpp
        return make_grid((1, 1), mpp, tile_px, tile_um, rule=grid_rule).extent
    raise SlideflowError(
        f"{job.tfrecord}: cannot tell the tile size in level-0 pixels (no .extract.json beside "
        "it and no slide found); add the slide to the project sources or re-extract tiles"
    )


def source_identity(job: SlideJob) -> dict[str, Any] | None:
    """What the job's bag is made from: the source file (size, mtime_ns; TFRecord
    sidecar/index digests) and, from a slide, the effective MPP with its source and the
    content digests of the mask and ROI files (each changes which tiles are read)."""
    try:
        if job.tfrecord is not None:
            return {"tfrecord": tfrecord_identity(job.tfrecord)}
        if job.slide_path is not None:
            mpp_source = "slide" if job.mpp is None else (job.mpp_source or "override")
            return {"slide": _input_identity(job.slide_path, file_identity),
                    "mpp": None if job.mpp is None else float(job.mpp), "mpp_source": mpp_source,
                    "mask": _input_identity(job.mask, file_digest),
                    "rois": _input_identity(job.rois, file_digest)}
    except OSError:
        return None  # missing source: the job fails with a clear error when it runs
    return None


def _input_identity(path: Any, local: Any) -> Any:
    """`local(path)` for a file, the remote object's identity for a URL, None for None."""
    if path is None:
        return None
    if is_url(path):
        from .remote.fetch import RemoteObject

        return RemoteObject(path).identity()
    return local(path)


def _bag_is_current(outdir: Path, name: str, fmt: str, request: dict[str, Any],
                    identity: dict[str, Any] | None = None) -> bool:
    if not bag_path(outdir, name, fmt).exists():
        return False
    encoder = request.get("encoder") or ((request.get("config") or {}).get("extractor")
                                         or {}).get("kwargs", {}).get("name")
    meta = read_bag_meta(outdir, name, fmt, encoder=encoder) or {}
    recorded = meta.get("request")
    if recorded != normalize(request):
        log.info("%s: existing bag was made with other settings; regenerating", name)
        return False
    if identity is not None and meta.get("source_identity") != normalize(identity):
        log.info("%s: the slide or TFRecord changed since its bag was made (size, mtime or "
                 "sidecar); regenerating", name)
        return False
    return True


def _check_record_count(job: SlideJob, tiles: int) -> None:
    """A TFRecord must yield what its sidecar (or index) promised: one truncated exactly at a
    record boundary parses cleanly but is short."""
    promised = promised_records(job.tfrecord) if job.tfrecord is not None else None
    if promised is not None and promised[0] != tiles:
        raise TFRecordError(f"{job.tfrecord}: {tiles} records read but {promised[1]} promises "
                            f"{promised[0]} (truncated or replaced?); re-extract the tiles")


def generate_bags(
    jobs: Sequence[SlideJob],
    extractor: Any,
    outdir: str | Path,
    tile_px: int,
    tile_um: Any,
    *,
    normalizer: Any = None,
    selection: TileSelection | None = None,
    fmt: str = "pt",
    force_regenerate: bool = False,
    min_tiles: int = 0,
    max_tiles: int | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
    ray: Any = None,
    save_images: bool = False,
) -> BagsReport:
    """Featurise every job into `outdir`; one failing slide is reported, the rest go on.

    `extractor` may be a list: each tile batch is read once and fed to every extractor, whose
    bags go to `outdir/<extractor name>/`. Slides locked by another live process are skipped
    (`report.busy`). `devices` (e.g. `['cuda:0', 'cuda:1']`) runs one worker process per
    device; `ray` (True for a local cluster, or an address) runs the slides on a Ray cluster
    (see docs/cli.md). `save_images` also writes the tiles as PNG to `<outdir>/<slide>.images/`.
    """
    from .bag_runner import BagOptions, claim_target, make_target, run_serial

    tile_px, tile_um, _ = check_tile_geometry(  # once, not once per slide
        tile_px, tile_um, (selection or TileSelection()).stride_div)
    num_threads = optional_positive_int(num_threads, "num_threads")
    if devices:
        from .distributed import device_list
        from .model.extractors.base import check_device

        devices = [str(check_device(d)) for d in device_list(devices)]
    min_tiles = positive_int(min_tiles, "min_tiles", minimum=0)
    max_tiles = optional_positive_int(max_tiles, "max_tiles")
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    many = isinstance(extractor, (list, tuple))
    extractors = [resolve_extractor(e) for e in (extractor if many else [extractor])]
    names = [e.name for e in extractors]
    if len(set(names)) != len(names):
        raise ValueError(f"extractors given twice: {names}")
    normalizer = resolve(normalizer)
    opts = BagOptions(int(tile_px), tile_um, selection or TileSelection(), force_regenerate,
                      min_tiles, max_tiles, seed, num_threads, save_images)
    outdir = Path(outdir)
    # AtlasPatch: every extractor writes into the same files (features/<name>), one folder
    shared = not many or fmt == "atlaspatch"
    targets = [make_target(e, outdir if shared else outdir / e.name, normalizer, opts, fmt)
               for e in extractors]
    start = time.perf_counter()
    superseded: dict[str, list[str]] = {}
    for t in targets:  # one configuration per folder, claimed before any bag is written
        try:
            claim = claim_target(t, force_regenerate)
        except OSError as exc:  # e.g. a full disk: the run cannot start; say so
            raise SlideflowError(f"{t.outdir}: cannot claim the folder for this run, its "
                                 f"configuration was not written ({exc}); no bag was written"
                                 ) from exc
        if claim.moved:
            superseded[str(claim.superseded)] = [str(p.relative_to(t.outdir))
                                                 for p in claim.moved]
    jobs = list(jobs)
    outcomes: list[Any] = []
    try:
        if ray is not None and ray is not False:
            from .distributed.ray_runner import run_ray

            outcomes = run_ray(jobs, targets, opts, normalizer=normalizer, ray=ray,
                               progress=progress)
        elif devices:
            from .distributed.devices import run_devices

            outcomes = run_devices(jobs, targets, opts, normalizer=normalizer,
                                   devices=devices, progress=progress)
        else:
            run_serial(jobs, targets, opts, normalizer=normalizer, progress=progress,
                       outcomes=outcomes)
    except BaseException as exc:  # interrupted: the caller can still write what was done
        exc.partial_report = BagsReport(outdir, outcomes=outcomes,  # type: ignore[attr-defined]
                                        superseded=superseded)
        raise
    report = BagsReport(outdir, outcomes=outcomes, superseded=superseded)
    report.seconds = time.perf_counter() - start
    return report


def check_run_options(*, workers: Any = None, mpp: Any = None, device: Any = None,
                      devices: Any = None) -> None:
    """Run-wide options checked once where they enter (the CLI), before any model is built:
    a bad value is one error, never the same failure for every slide."""
    from .validate import mpp_value

    optional_positive_int(workers, "--workers")
    if mpp is not None:
        mpp_value(mpp, "--mpp")
    if device is not None or devices:
        from .distributed import device_list
        from .model.extractors.base import check_device

        for d in ([device] if device is not None else []) + (device_list(devices) if devices
                                                            else []):
            check_device(d)


def generate_feature_bags(
    jobs: Sequence[SlideJob],
    extractor: Any,
    outdir: str | Path | None,
    tile_px: int,
    tile_um: Any,
    *,
    normalizer: Any = None,
    force_regenerate: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    format: str = "pt",
    min_tiles: int = 0,
    max_tiles: int | None = None,
    seed: int = 0,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
    ray: Any = None,
    **selection: Any,
) -> BagsReport:
    """Bags for `jobs` with the same tile-selection options as `extract_tiles` (`qc`, ROIs,
    whitespace/grayspace...; `qc` defaults to `DEFAULT_QC`, as extraction's does).
    `Dataset.generate_feature_bags` makes the jobs (from its TFRecords
    when they exist, otherwise from the slides), so the engine never calls back into a Dataset.

    `num_workers` sets the reader threads; `batch_size` the model batch. `devices` runs one
    worker process per device, `ray` runs on a Ray cluster (see `generate_bags`). Default `outdir`:
    `<first tfrecords folder>/../pt_files/<extractor name>` is left to the Project; a Dataset
    call without `outdir` raises.
    """
    batch_size = optional_positive_int(batch_size, "batch_size")
    num_workers = optional_positive_int(num_workers, "num_workers")
    kwargs = {"batch_size": batch_size} if batch_size and isinstance(extractor, str) else {}
    extractor = resolve_extractor(extractor, **kwargs)
    if batch_size and not kwargs:
        extractor.batch_size = batch_size
    if outdir is None:
        raise SlideflowError("generate_feature_bags needs outdir= (Project.generate_feature_bags "
                             "defaults it to <project>/pt_files/<extractor>)")
    unknown = set(selection) - set(TileSelection.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown tile-selection options {sorted(unknown)}; valid: "
                        f"{sorted(TileSelection.__dataclass_fields__)}")
    selection = {"qc": DEFAULT_QC, **selection}  # the same default as extraction and the CLI
    return generate_bags(
        jobs, extractor, outdir, tile_px, tile_um,
        normalizer=normalizer, selection=TileSelection(**selection), fmt=format,
        force_regenerate=force_regenerate, min_tiles=min_tiles, max_tiles=max_tiles, seed=seed,
        num_threads=num_workers, progress=progress, devices=devices, ray=ray,
    )


def jobs_from_paths(paths: Iterable[str | Path], mpp: float | None = None,
                    rois: dict[str, Path] | None = None) -> list[SlideJob]:
    """Jobs for loose slide files / DICOM folders (the CLI path).

    Outputs are keyed by slide name, so two different files with one name (A.svs, A.tiff,
    sub/A.svs) would share one bag: that is an error listing them, raised before any work. The
    same file given twice (a folder and a file in it) is kept once.
    """
    jobs: list[SlideJob] = []
    by_name: dict[str, list[Any]] = {}
    seen: set[Any] = set()
    for p in paths:
        where = slide_path(p)  # a URL stays a str
        real = where if is_url(where) else where.resolve()
        if real in seen:
            continue
        seen.add(real)
        name = slide_name(where)
        by_name.setdefault(name, []).append(where)
        jobs.append(SlideJob(name=name, slide_path=where, mpp=mpp, rois=(rois or {}).get(name)))
    clashes = {n: ps for n, ps in by_name.items() if len(ps) > 1}
    if clashes:
        lines = "; ".join(f"{n!r}: {', '.join(map(str, ps))}" for n, ps in sorted(clashes.items()))
        raise OutputConflictError(f"several slides would write the same output ({lines}); "
                                  "rename them or run them into separate output folders")
    return jobs


def iter_job_features(jobs: Sequence[SlideJob], extractor: Any, tile_px: int, tile_um: Any,
                      selection: TileSelection, *, normalizer: Any = None,
                      num_threads: int | None = None
                      ) -> Iterator[tuple[str, np.ndarray, np.ndarray, int, int]]:
    """In-memory features, job by job: (name, features (N, D), top-left coords (N, 2),
    patch_size_level0, tiles)."""
    for job in jobs:
        collector = RowCollector(extractor.num_features)
        source, extent, _ = _job_source(job, tile_px, tile_um, selection, extractor.batch_size,
                                        num_threads, None, 0, extractor)
        stats = run(source, collector, extractor=extractor, normalizer=normalizer)
        yield (job.name, *collector.result(), extent, stats.tiles)
