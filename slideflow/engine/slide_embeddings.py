"""Slide embeddings on top of the tile pipeline: reuse matching tile bags, make missing ones.

    generate_slide_embeddings(source, slide_encoder, outdir)

`source` is a bag folder or a list of bag files (used as they are, once their recorded
extractor and geometry are checked), a Dataset (bags are made, or reused when current, in
``bags_dir`` = ``<outdir>/tile_bags`` by default), or a list of slide paths (the CLI; the
encoder's tile geometry unless ``tile_px``/``tile_um`` say otherwise). Output layout and
config: `slideflow.engine.slide_embedding_outputs`. The run's summary.json and failures.csv
are written to ``outdir``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SlideflowError, TileMismatchError
from ..io.bags import list_bags, slide_of
from ..io.bags_config import read_bags_config
from .features import generate_bags, jobs_from_paths, resolve_extractor
from .outcome import SlideOutcome, Status
from .selection import DEFAULT_QC, TileSelection
from .slide_embedding_outputs import (
    CONFIG_NAME,
    SlideEmbeddingsReport,
    bag_files,
    canonical_extractor,
    check_bags_fit,
    check_geometry,
    embed_bag_folder,
    embed_bags,
    finish_run,
    read_slide_embedding,
    rebuild_slide_encoders,
    resolve_slide_encoder,
)
from .two_stage import TwoStageExtractor, build_feature_extractor

log = logging.getLogger("slideflow")

__all__ = ["CONFIG_NAME", "SlideEmbeddingsReport", "TwoStageExtractor", "build_feature_extractor",
           "check_bags_fit", "check_geometry",
           "embed_bag_folder", "generate_slide_embeddings", "read_slide_embedding",
           "rebuild_slide_encoders"]


def _tile_stage(jobs: Sequence[Any], encoder: Any, bags_dir: Path, tile_px: int, tile_um: Any,
                tile_extractor: Any, progress: bool, **bag_kwargs: Any):
    name = tile_extractor or encoder.tile_extractor
    if name is None:
        raise SlideflowError(f"{encoder.name} reads any tile features: pass "
                             "tile_extractor= (a registry name or an extractor)")
    ext = resolve_extractor(name)
    if encoder.tile_extractor is not None and canonical_extractor(ext.name) != canonical_extractor(
            encoder.tile_extractor):
        raise TileMismatchError(f"{encoder.name} needs {encoder.tile_extractor!r} features, "
                                f"not {ext.name!r}")
    encoder.check_features(ext.num_features, str(bags_dir))
    check_geometry(encoder, tile_px, tile_um, "tile settings")
    selection = {"qc": DEFAULT_QC, **{k: bag_kwargs.pop(k) for k in list(bag_kwargs)
                                      if k in TileSelection.__dataclass_fields__}}
    return generate_bags(jobs, ext, bags_dir, tile_px, tile_um,
                         selection=TileSelection(**selection), progress=progress, **bag_kwargs)


def _default_geometry(encoder: Any, tile_px: Any, tile_um: Any) -> tuple[int, Any]:
    tile_px = tile_px if tile_px is not None else encoder.spec.tile_px
    tile_um = tile_um if tile_um is not None else encoder.spec.tile_um
    if tile_px is None or tile_um is None:
        raise SlideflowError(f"{encoder.name} has no preferred tile geometry: pass tile_px= "
                             "and tile_um=")
    return int(tile_px), tile_um


def generate_slide_embeddings(
    source: Any,
    slide_encoder: Any,
    outdir: str | os.PathLike,
    *,
    format: str = "pt",
    overwrite: bool = False,
    bags_dir: str | os.PathLike | None = None,
    tile_extractor: Any = None,
    tile_px: int | None = None,
    tile_um: Any = None,
    progress: bool = True,
    **bag_kwargs: Any,
) -> SlideEmbeddingsReport:
    """Embed every slide of `source` with `slide_encoder` into `outdir` (see module doc).

    Extra keyword arguments are the tile stage's (tile-selection options such as ``qc``,
    ``max_tiles``, ``min_tiles``, ``force_regenerate``...) and apply only when bags are made.
    """
    start = time.perf_counter()
    encoder = resolve_slide_encoder(slide_encoder)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    report = SlideEmbeddingsReport(outdir)
    is_dataset = hasattr(source, "feature_jobs")
    is_paths = isinstance(source, (list, tuple)) and source and not all(
        Path(p).suffix.lower() in (".pt", ".h5", ".hdf5", ".zarr") for p in source)
    if is_dataset or is_paths:
        bags = Path(bags_dir) if bags_dir is not None else outdir / "tile_bags"
        if is_dataset:
            jobs, px, um = source.feature_jobs("auto"), source.tile_px, source.tile_um
        else:
            jobs = jobs_from_paths(source)
            px, um = _default_geometry(encoder, tile_px, tile_um)
        report.bags = _tile_stage(jobs, encoder, bags, px, um, tile_extractor, progress,
                                  **bag_kwargs)
        for o in report.bags.outcomes:
            if o.status == Status.FAILED:
                report.outcomes.append(SlideOutcome(o.slide, Status.FAILED, fetched=o.fetched)
                                       .fail(o.error_type, f"tile stage: {o.error}"))
        files = [p for p in list_bags(bags) if slide_of(p) in {j.name for j in jobs}]
        cfg = read_bags_config(bags)
        check_bags_fit(cfg, encoder, str(bags))
    else:
        if bag_kwargs:
            raise TypeError(f"unknown options {sorted(bag_kwargs)} (tile-stage options apply "
                            "only when bags are made from a dataset or slides)")
        files, cfg = bag_files(source, encoder)
    embed_bags(files, encoder, outdir, report, bags_config=cfg, fmt=format,
               overwrite=overwrite)
    return finish_run(report, encoder, start)
