"""One slide's job: where its tiles come from (the slide, or its TFRecord) and whether its
bag is current.

`SlideJob` names a slide; `_job_source` opens it as a batch source for the streaming loop
(`engine.pipeline`), `bags_config` is the configuration a bag records, `_bag_is_current` the
resume check and `source_identity` the key it compares. The bag runner, the distributed
runners and `Dataset` work build on these; the bag API itself is `engine.features`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputConflictError, SlideflowError, TFRecordError
from ..io.bags import bag_path, read_bag_meta
from ..io.bags_config import normalize
from ..io.identity import file_digest, file_identity, promised_records, tfrecord_identity
from ..io.location import is_url, slide_path
from ..io.tfrecord import check_tile_size
from ..model import build_feature_extractor
from ..model.extractors.sf3_config import bags_entry
from ..norm import autoselect, resolve
from ..remote.identity import input_identity
from ..slide import slide_name
from ..slide.decode_check import decoder_record
from ..slide.geometry import TileGeometry, make_grid
from ..slide.wsi import WSI
from ..version import __version__
from .extract.sidecar import read_sidecar
from .pipeline import (
    RowCollector,
    default_decoder,
    gpu_decode_device,
    run,
    slide_read_options,
    tfrecord_source,
)
from .protocols import Extractor
from .selection import _RECORD_ORDER, TileSelection, open_wsi
from .tfrecord_decode import decoder_record as tfrecord_decoder_record

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


def resolve_extractor(extractor: Extractor | str, **kwargs: Any) -> Extractor:
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


def bags_config(extractor: Extractor, normalizer: Any, tile_px: int, tile_um: Any,
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


def _job_source(job: SlideJob, geometry: TileGeometry, selection: TileSelection,
                batch_size: int, num_threads: int | None, max_tiles: int | None, seed: int,
                extractor: Extractor | None = None):
    """(batches iterator, patch_size_level0, slide meta) for one job; coords are top-left.

    Tiles are decoded where `extractor` runs (nvJPEG on CUDA: `default_decoder` for TFRecords,
    `slide_read_options` for slides).
    """
    tile_px, tile_um = geometry.tile_px, geometry.tile_um
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
            return {"slide": input_identity(job.slide_path, file_identity),
                    "mpp": None if job.mpp is None else float(job.mpp), "mpp_source": mpp_source,
                    "mask": input_identity(job.mask, file_digest),
                    "rois": input_identity(job.rois, file_digest)}
    except OSError:
        return None  # missing source: the job fails with a clear error when it runs
    return None


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


def iter_job_features(jobs: Sequence[SlideJob], extractor: Extractor,
                      tile_px: int | TileGeometry, tile_um: float | str | None,
                      selection: TileSelection, *, normalizer: Any = None,
                      num_threads: int | None = None, batch_size: int | None = None
                      ) -> Iterator[tuple[str, np.ndarray, np.ndarray, int, int]]:
    """In-memory features, job by job: (name, features (N, D), top-left coords (N, 2),
    patch_size_level0, tiles); `batch_size` defaults to the extractor's."""
    batch_size = batch_size or extractor.batch_size
    geometry = TileGeometry.parse(tile_px, tile_um)
    for job in jobs:
        collector = RowCollector(extractor.num_features)
        source, extent, _ = _job_source(job, geometry, selection, batch_size,
                                        num_threads, None, 0, extractor)
        stats = run(source, collector, extractor=extractor, normalizer=normalizer,
                    batch_size=batch_size)
        yield (job.name, *collector.result(), extent, stats.tiles)
