"""What a Dataset asks the engine to do: its slides and TFRecords as jobs, handed down.

The research layer knows datasets (sources, annotations, MPP columns, ROI folders); the engine
knows jobs (a slide path or a TFRecord, an output folder). This module turns one into the other,
so the engine never calls back into a Dataset:

    extract_dataset(dataset)         -> extract.run_jobs(ExtractJobs) + reports, summary.json
    Dataset.generate_feature_bags()  -> features.generate_feature_bags(dataset.feature_jobs())
    DatasetFeatures(extractor, ds)   -> features.iter_job_features(ds.feature_jobs())
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.extract import (
    ExtractionSummary,
    ExtractJob,
    ExtractOptions,
    run_jobs,
    write_run_outputs,
)
from ..engine.progress import track_slides
from ..engine.selection import DEFAULT_QC, TileSelection
from ..engine.slide_job import bags_config, iter_job_features, resolve_extractor, resolve_normalizer
from ..io.bags import list_bags, read_bag, slide_of, write_bag
from ..io.bags_config import config_path, write_bags_config
from ..io.tfrecord import get_tfrecord_label
from ..remote.url import safe_url
from ..validate import optional_positive_int, renamed

log = logging.getLogger("slideflow")


def extract_dataset(dataset: Any, *, num_threads: int | None = None,
                    slides_in_flight: int | None = None, progress: bool | None = True,
                    mpp_override: float | dict[str, float] | None = None,
                    **options: Any) -> ExtractionSummary:
    """Extract every slide of a Dataset into its sources' TFRecord folders (+ reports); `qc`
    defaults to `slideflow.selection.DEFAULT_QC`."""
    opt = ExtractOptions(**{"qc": DEFAULT_QC, **options})
    label = get_tfrecord_label(dataset.tile_px, dataset.tile_um)
    jobs: list[ExtractJob] = []
    failed: dict[str, str] = {}
    existing = dataset.tfrecords(include_incomplete=True, as_dict=True)
    ann_mpp, masks = dataset.annotation_mpp(), dataset.annotation_masks()
    paths = dataset.slide_paths(as_dict=True)
    for name, src in dataset.slide_sources().items():
        if src.tfrecords is None:
            failed[name] = f"source {src.name!r} has no 'tfrecords' folder in datasets.json"
            continue
        path = paths.get(name)
        if path is None:
            if name not in existing:
                failed[name] = (f"slide file not found in the slides folder of source "
                                f"{src.name!r} ({safe_url(str(src.slides))})")
            continue
        if isinstance(mpp_override, dict):
            mpp = mpp_override.get(name, ann_mpp.get(name))
        else:
            mpp = mpp_override if mpp_override is not None else ann_mpp.get(name)
        tiles_dir = (src.tiles / label) if (opt.save_tiles and src.tiles) else None
        if opt.save_tiles and src.tiles is None:
            log.warning("source %s has no 'tiles' folder; loose tiles are not saved", src.name)
        jobs.append(ExtractJob(name, path, src.tfrecords / label, tiles_dir, src.roi_file(name),
                               float(mpp) if mpp is not None else None, masks.get(name)))
    if not jobs and not failed:
        log.warning("no slides to extract (dataset has %d slides)", len(dataset.slides()))
    summary = run_jobs(jobs, dataset.tile_px, dataset.tile_um, opt, num_threads=num_threads,
                       slides_in_flight=slides_in_flight, progress=progress, failed=failed)
    return write_run_outputs(summary, jobs, opt)


class DatasetFeatures:
    """In-memory features of a dataset: {slide: (features (N, D), coords (N, 2) top-left)}.

    Build from an extractor and a Dataset (`DatasetFeatures(extractor, dataset)`, Slideflow's
    spelling) or from a bag folder (`DatasetFeatures.from_bags(dir)`). Keyword arguments:
    ``normalizer`` (method name or fitted normaliser) and ``normalizer_source`` (a preset such
    as 'v3' or an image path to fit to), ``batch_size``, ``num_threads`` (reader threads;
    ``num_workers``, its old name, warns), ``layers`` (with an
    extractor name), ``labels`` (kept as `.labels`), ``progress``, and the tile-selection
    options of `generate_feature_bags` (``qc``, default Otsu as there; ``roi_method``...).
    Anything else raises TypeError: a misspelt option must not silently change the features.
    """

    _SF3_UNSUPPORTED = {
        "cache": "the PKL cache is not supported; write bags with .to_torch(dir) and load them "
                 "with DatasetFeatures.from_bags(dir)",
        "annotations": "deprecated in Slideflow 3; pass labels=",
        "augment": "test-time augmentation is not supported",
    }

    def __init__(self, extractor: Any = None, dataset: Any = None, *, normalizer: Any = None,
                 normalizer_source: str | Path | None = None, batch_size: int | None = None,
                 num_threads: int | None = None, num_workers: int | None = None,
                 layers: Any = None,
                 include_preds: bool | None = None, labels: Any = None,
                 progress: bool = True, **selection: Any):
        self.bags: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.patch_sizes: dict[str, int | None] = {}
        self.extractor = None
        self.batch_size: int | None = None
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
                "normalizer, normalizer_source, batch_size, num_threads, layers, labels, "
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
        # the run's batch is an argument: a caller's extractor object is never changed
        self.batch_size = int(batch_size) if batch_size else None
        self.normalizer = resolve_normalizer(normalizer, normalizer_source)
        self.num_features = self.extractor.num_features
        self.tile_px, self.tile_um = dataset.tile_px, dataset.tile_um
        # the same tissue QC default as extraction, bags and the CLI
        self.selection = TileSelection(**{"qc": DEFAULT_QC, **selection})
        self._generate(dataset, optional_positive_int(
            renamed(num_threads, num_workers, "num_threads", "num_workers"), "num_threads"),
            progress)

    def _generate(self, dataset: Any, num_threads: int | None, progress: bool) -> None:
        jobs = dataset.feature_jobs()
        with track_slides(len(jobs), "features", enabled=progress) as bar:
            for name, feats, coords, extent, tiles in iter_job_features(
                    jobs, self.extractor, self.tile_px, self.tile_um, self.selection,
                    normalizer=self.normalizer, num_threads=num_threads,
                    batch_size=self.batch_size):
                self.bags[name] = (feats, coords)
                self.patch_sizes[name] = extent
                bar.slide_done(name, tiles)

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
