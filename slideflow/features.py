"""Feature bags for MIL: slides or TFRecords -> extractor -> one bag per slide.

`generate_feature_bags` drives the streaming engine (`slideflow.pipeline`) once per slide with a
`BagWriter` sink, writes `bags_config.json` (Slideflow layout + our provenance) and resumes:
a bag is reused only when its recorded settings match the request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, SlideflowError
from .io.bags import bag_path, list_bags, read_bag, read_bag_meta, slide_of, write_bag
from .io.bags_config import config_path, normalize, write_bags_config
from .model import build_feature_extractor
from .norm import autoselect, resolve
from .pipeline import RowCollector, run_features, tfrecord_source
from .progress import track_slides
from .selection import TileSelection, open_wsi
from .slide import slide_name
from .slide.geometry import check_tile_geometry, make_grid
from .slide.wsi import WSI
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


@dataclass
class BagsReport:
    """What a generate_feature_bags run did, slide by slide."""

    outdir: Path
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    busy: list[str] = field(default_factory=list)  # held by another live process: skipped
    outcomes: list[Any] = field(default_factory=list, repr=False)  # bag_runner.SlideOutcome

    @property
    def tiles(self) -> int:
        return sum(v["tiles"] for v in self.done.values())

    def __repr__(self) -> str:
        busy = f", {len(self.busy)} busy" if self.busy else ""
        return (f"BagsReport({self.outdir}: {len(self.done)} done, {len(self.skipped)} reused"
                f"{busy}, {len(self.failed)} failed, {self.tiles} tiles in "
                f"{self.seconds:.1f} s)")


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
        "extractor": extractor.dump_config(),
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
                batch_size: int, num_threads: int | None, max_tiles: int | None, seed: int):
    """(batches iterator, patch_size_level0, slide meta) for one job; coords are top-left."""
    if job.tfrecord is not None:
        extent = _tfrecord_extent(job, tile_px, tile_um)
        half = extent // 2

        def shifted():
            for tiles, locs in tfrecord_source(job.tfrecord, batch_size, num_threads):
                yield tiles, np.asarray(locs, np.int64) - half

        return shifted(), extent, {"source": "tfrecord", "tfrecord": str(job.tfrecord)}
    wsi = _open_job_wsi(job, tile_px, tile_um, selection)
    coords = wsi.coords
    if max_tiles is not None and len(coords) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(coords), max_tiles, replace=False))
        coords = coords[keep]
    meta = {"source": "slide", "slide_path": str(job.slide_path), "mpp": wsi.mpp,
            "level0_width": wsi.dimensions[0], "level0_height": wsi.dimensions[1],
            "objective_power": wsi.reader.objective_power}
    return wsi.tiles(batch_size=batch_size, num_threads=num_threads, coords=coords), \
        wsi.full_extract_px, meta


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


def _tfrecord_extent(job: SlideJob, tile_px: int, tile_um: Any) -> int:
    """Tile extent in level-0 px for a TFRecord: from its extraction sidecar, else the slide."""
    sidecar = job.tfrecord.with_suffix(".extract.json") if job.tfrecord else None
    if sidecar is not None and sidecar.exists():
        meta = json.loads(sidecar.read_text())
        extent = meta.get("full_extract_px") or meta.get("settings", {}).get("full_extract_px")
        if extent:
            return int(extent)
    if job.slide_path is not None:
        mpp = job.mpp or WSI(job.slide_path, tile_px, tile_um, mpp=job.mpp).mpp
        return make_grid((1, 1), mpp, tile_px, tile_um).extent
    raise SlideflowError(
        f"{job.tfrecord}: cannot tell the tile size in level-0 pixels (no .extract.json beside "
        "it and no slide found); add the slide to the project sources or re-extract tiles"
    )


def _bag_is_current(outdir: Path, name: str, fmt: str, request: dict[str, Any]) -> bool:
    if not bag_path(outdir, name, fmt).exists():
        return False
    meta = read_bag_meta(outdir, name, fmt) or {}
    recorded = meta.get("request")
    if recorded != normalize(request):
        log.info("%s: existing bag was made with other settings; regenerating", name)
        return False
    return True


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
    from .bag_runner import BagOptions, make_target, run_serial

    tile_px, tile_um, _ = check_tile_geometry(tile_px, tile_um)  # once, not once per slide
    min_tiles = positive_int(min_tiles, "min_tiles", minimum=0)
    max_tiles = optional_positive_int(max_tiles, "max_tiles")
    if fmt not in ("pt", "h5", "zarr"):
        raise InvalidArgumentError(f"format must be 'pt', 'h5' or 'zarr', got {fmt!r}")
    many = isinstance(extractor, (list, tuple))
    extractors = [resolve_extractor(e) for e in (extractor if many else [extractor])]
    names = [e.name for e in extractors]
    if len(set(names)) != len(names):
        raise ValueError(f"extractors given twice: {names}")
    normalizer = resolve(normalizer)
    opts = BagOptions(int(tile_px), tile_um, selection or TileSelection(), force_regenerate,
                      min_tiles, max_tiles, seed, num_threads, save_images)
    outdir = Path(outdir)
    targets = [make_target(e, outdir / e.name if many else outdir, normalizer, opts, fmt)
               for e in extractors]
    start = time.perf_counter()
    jobs = list(jobs)
    if ray is not None and ray is not False:
        from .distributed.ray_runner import run_ray

        outcomes = run_ray(jobs, targets, opts, normalizer=normalizer, ray=ray,
                           progress=progress)
    elif devices:
        from .distributed.devices import run_devices

        outcomes = run_devices(jobs, targets, opts, normalizer=normalizer, devices=devices,
                               progress=progress)
    else:
        outcomes = run_serial(jobs, targets, opts, normalizer=normalizer, progress=progress)
    for t in targets:
        write_bags_config(t.outdir, t.cfg)  # metadata last
    report = BagsReport(outdir, outcomes=outcomes)
    for o in outcomes:
        if o.status == "done":
            report.done[o.slide] = {"tiles": o.tiles, "seconds": o.seconds}
        elif o.status == "reused":
            report.skipped.append(o.slide)
        elif o.status == "busy":
            report.busy.append(o.slide)
        else:
            report.failed[o.slide] = f"{o.error_type}: {o.error}"
    report.seconds = time.perf_counter() - start
    return report


def generate_feature_bags(
    dataset: Any,
    extractor: Any,
    outdir: str | Path | None = None,
    *,
    normalizer: Any = None,
    force_regenerate: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    format: str = "pt",
    min_tiles: int = 0,
    max_tiles: int | None = None,
    source: str = "auto",
    seed: int = 0,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
    ray: Any = None,
    **selection: Any,
) -> BagsReport:
    """Bags for every slide of `dataset`: from its TFRecords when they exist, otherwise straight
    from the slides with the same tile-selection options as `extract_tiles` (`qc`, ROIs,
    whitespace/grayspace...). `source='slides' | 'tfrecords'` forces one or the other.

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
    return generate_bags(
        dataset.feature_jobs(source), extractor, outdir, dataset.tile_px, dataset.tile_um,
        normalizer=normalizer, selection=TileSelection(**selection), fmt=format,
        force_regenerate=force_regenerate, min_tiles=min_tiles, max_tiles=max_tiles, seed=seed,
        num_threads=num_workers, progress=progress, devices=devices, ray=ray,
    )


def jobs_from_paths(paths: Iterable[str | Path], mpp: float | None = None,
                    rois: dict[str, Path] | None = None) -> list[SlideJob]:
    """Jobs for loose slide files / DICOM folders (the CLI path)."""
    jobs = []
    for p in paths:
        name = slide_name(p)
        jobs.append(SlideJob(name=name, slide_path=Path(p), mpp=mpp, rois=(rois or {}).get(name)))
    return jobs


class DatasetFeatures:
    """In-memory features of a dataset: {slide: (features (N, D), coords (N, 2) top-left)}.

    Build from an extractor and a Dataset (`DatasetFeatures(extractor, dataset)`, Slideflow's
    spelling) or from a bag folder (`DatasetFeatures.from_bags(dir)`). Keyword arguments:
    ``normalizer`` (method name or fitted normaliser) and ``normalizer_source`` (a preset such
    as 'v3' or an image path to fit to), ``batch_size``, ``num_workers``, ``layers`` (with an
    extractor name), ``labels`` (kept as `.labels`), ``progress``, and the tile-selection
    options of `generate_feature_bags` (``qc``, ``roi_method``...). Anything else raises
    TypeError: a misspelt option must not silently change the features.
    """

    _SF3_UNSUPPORTED = {
        "cache": "the PKL cache is not supported; write bags with .to_torch(dir) and load them "
                 "with DatasetFeatures.from_bags(dir)",
        "annotations": "deprecated in Slideflow 3; pass labels=",
        "augment": "test-time augmentation is not supported",
    }

    def __init__(self, extractor: Any = None, dataset: Any = None, *, normalizer: Any = None,
                 normalizer_source: str | Path | None = None, batch_size: int | None = None,
                 num_workers: int | None = None, layers: Any = None,
                 include_preds: bool | None = None, labels: Any = None,
                 progress: bool = True, **selection: Any):
        self.bags: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.patch_sizes: dict[str, int | None] = {}
        self.extractor = None
        self.normalizer = None
        self.labels = labels
        self.num_features = 0
        self.tile_px: int | None = None
        self.tile_um: Any = None
        self.selection = TileSelection()
        self.config: dict[str, Any] | None = None  # bags_config of from_bags folders
        for key, why in self._SF3_UNSUPPORTED.items():
            if key in selection:
                raise TypeError(f"DatasetFeatures: {key}= {why}")
        unknown = set(selection) - set(TileSelection.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"DatasetFeatures: unknown keyword arguments {sorted(unknown)}; valid: "
                "normalizer, normalizer_source, batch_size, num_workers, layers, labels, "
                f"progress and the tile-selection options {sorted(TileSelection.__dataclass_fields__)}")
        if include_preds:
            raise TypeError("DatasetFeatures: include_preds=True (model predictions) is not "
                            "supported for feature extractors; features only")
        if (extractor is None) != (dataset is None):
            raise TypeError("DatasetFeatures needs both an extractor and a dataset (or "
                            "neither, then use DatasetFeatures.from_bags)")
        if extractor is None:
            return
        kwargs: dict[str, Any] = {}
        if layers is not None:
            if not isinstance(extractor, str):
                raise TypeError("layers= needs an extractor name (it configures the build)")
            kwargs["layers"] = layers
        if batch_size and isinstance(extractor, str):
            kwargs["batch_size"] = int(batch_size)
        self.extractor = resolve_extractor(extractor, **kwargs)
        if batch_size and not isinstance(extractor, str):
            self.extractor.batch_size = int(batch_size)
        self.normalizer = resolve_normalizer(normalizer, normalizer_source)
        self.num_features = self.extractor.num_features
        self.tile_px, self.tile_um = dataset.tile_px, dataset.tile_um
        self.selection = TileSelection(**selection)
        self._generate(dataset, num_workers, progress)

    def _generate(self, dataset: Any, num_workers: int | None, progress: bool) -> None:
        jobs = dataset.feature_jobs()
        with track_slides(len(jobs), "features", enabled=progress) as bar:
            for job in jobs:
                collector = RowCollector(self.num_features)
                source, extent, _ = _job_source(job, self.tile_px, self.tile_um,
                                                self.selection, self.extractor.batch_size,
                                                num_workers, None, 0)
                stats = run_features(self.extractor, source, collector,
                                     normalizer=self.normalizer)
                self.bags[job.name] = collector.result()
                self.patch_sizes[job.name] = extent
                bar.slide_done(job.name, stats.tiles)

    @classmethod
    def from_bags(cls, folder: str | Path) -> DatasetFeatures:
        obj = cls()
        cfg_file = config_path(folder)
        if cfg_file.is_file():
            obj.config = json.loads(cfg_file.read_text())
            obj.tile_px, obj.tile_um = obj.config.get("tile_px"), obj.config.get("tile_um")
        for path in list_bags(folder):
            bag = read_bag(path)
            obj.bags[slide_of(path)] = (bag.features, bag.coords)
            obj.patch_sizes[slide_of(path)] = bag.patch_size_level0
            obj.num_features = bag.features.shape[1]
        return obj

    def slides(self) -> list[str]:
        return sorted(self.bags)

    def bags_config(self) -> dict[str, Any] | None:
        """The bags_config.json of these features (None when the extractor is unknown)."""
        if self.extractor is not None:
            return bags_config(self.extractor, self.normalizer, self.tile_px, self.tile_um,
                               self.selection, "pt")
        return dict(self.config) if self.config else None

    def to_torch(self, outdir: str | Path) -> Path:
        """Write .pt bags (+ .index.npz) for every slide, then bags_config.json (so that
        `rebuild_extractor(outdir)` rebuilds the extractor and normaliser); returns the
        folder."""
        outdir = Path(outdir)
        cfg = self.bags_config()
        for name, (feats, coords) in self.bags.items():
            write_bag(outdir / f"{name}.pt", feats, coords,
                      patch_size_level0=self.patch_sizes.get(name))
        if cfg is not None:
            write_bags_config(outdir, cfg)  # metadata last
        else:
            log.warning("%s: no bags_config.json written (features loaded without their "
                        "extractor's config)", outdir)
        return outdir

    def to_df(self):
        """One row per slide: `slide`, `num_tiles` and the mean feature vector `activations`."""
        import pandas as pd

        rows = [{"slide": k, "num_tiles": len(f), "activations": f.mean(axis=0)}
                for k, (f, _) in sorted(self.bags.items())]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"DatasetFeatures({len(self.bags)} slides, {self.num_features} features)"
