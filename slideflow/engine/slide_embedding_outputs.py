"""Slide embeddings of tile bags: fit checks, per-slide files and their config (no slides here).

Outputs: ``<outdir>/<slide>.pt`` (float32 (D,) tensor, ``torch.load(weights_only=True)``),
or ``<outdir>/<slide>.h5`` with ``slide_features/<encoder>`` (several encoders may share one
file), and ``slide_embeddings.json`` (written last) with, per encoder, its config
(`rebuild_slide_encoders` rebuilds registered names only), the tile bags' config and
provenance. A bag folder is used only when its recorded tile extractor and tile geometry are
what the encoder was trained on (`check_bags_fit`). The engine-level entry point that also
makes missing bags is `slideflow.slide_embeddings.generate_slide_embeddings`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BagError, SlideflowError, TileMismatchError
from ..io import formats
from ..io.atomic import write_json_atomic
from ..io.bags import list_bags, read_bag, slide_of
from ..io.bags_config import read_bags_config
from ..io.base import to_json
from ..model.extractors.registry import get_spec, normalize
from ..model.slide_encoders.factory import build_slide_encoder, rebuild_slide_encoder
from ..model.slide_encoders.spec import tile_microns
from ..version import __version__
from .outcome import RunReport, SlideOutcome, Status, try_write_run_files

log = logging.getLogger("slideflow")

CONFIG_NAME = "slide_embeddings.json"
#: the formats that hold slide embeddings (`io.formats`)
FORMATS = formats.names(formats.SLIDE_EMBEDDINGS)


@dataclass
class SlideEmbeddingsReport(RunReport):
    """Per-slide outcomes of a slide-embedding run (`done`, `skipped`: existing embeddings
    kept, `failed`); `bags` is the tile stage's `BagsReport` when it ran. The run's
    summary.json and failures.csv are in `outdir`; `errors` says when they could not be
    written."""

    outdir: Path
    outcomes: list[SlideOutcome] = field(default_factory=list, repr=False)
    bags: Any = None
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> list[str]:
        return self.with_status(Status.DONE)

    @property
    def skipped(self) -> list[str]:
        """Slides whose embedding existed (kept)."""
        return self.reused

    def __repr__(self) -> str:
        return (f"SlideEmbeddingsReport({self.outdir}: {len(self.done)} embedded, "
                f"{len(self.skipped)} existing, {len(self.failed)} failed)")


def resolve_slide_encoder(encoder: Any, **kwargs: Any):
    if isinstance(encoder, str):
        return build_slide_encoder(encoder, **kwargs)
    return encoder


def canonical_extractor(name: str | None) -> str | None:
    if name is None:
        return None

    try:
        return normalize(get_spec(name).name)
    except Exception:  # not registered here: compare spellings
        return normalize(name)


def _bags_extractor(cfg: dict[str, Any]) -> str | None:
    prov = cfg.get("provenance") or cfg.get("slideflow_provenance") or {}
    return prov.get("extractor") or ((cfg.get("extractor") or {}).get("kwargs") or {}).get("name")


def check_geometry(encoder: Any, tile_px: Any, tile_um: Any, where: str) -> None:
    """Refuse (strict encoders) or warn about tiles of another size than the encoder's."""
    spec = encoder.spec
    if spec.tile_px is None:
        return
    got = tile_microns(int(tile_px), tile_um) if tile_px is not None else None
    same = (tile_px is not None and int(tile_px) == int(spec.tile_px) and got is not None
            and math.isclose(got, spec.tile_microns, rel_tol=1e-3))
    if same:
        return
    msg = (f"{where}: {spec.name} was trained on {spec.tile_px}-px tiles at {spec.tile_um} "
           f"({spec.tile_microns:g} um), these tiles are {tile_px}-px / {tile_um!r}; make "
           f"tile bags with tile_px={spec.tile_px}, tile_um={spec.tile_um!r}")
    if spec.geometry_strict:
        raise TileMismatchError(msg)
    log.warning("%s (continuing: %s does not require it)", msg, spec.name)


def check_bags_fit(cfg: dict[str, Any], encoder: Any, where: str) -> None:
    """Raise TileMismatchError when a bag folder cannot feed `encoder` (extractor, geometry)."""
    need = encoder.tile_extractor
    have = _bags_extractor(cfg)
    if need is not None and canonical_extractor(have) != canonical_extractor(need):
        raise TileMismatchError(f"{where}: bags were made with extractor {have!r}, "
                                f"{encoder.name} needs {need!r} features; generate bags with "
                                f"extractor={need!r}")
    if cfg.get("num_features") is not None:
        encoder.check_features(int(cfg["num_features"]), where)
    check_geometry(encoder, cfg.get("tile_px"), cfg.get("tile_um"), where)


# ------------------------------------------------------------------------------- sources
def bag_files(source: Any, encoder: Any) -> tuple[list[Path], dict[str, Any] | None]:
    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        folders = sorted({p.parent for p in files})
    else:
        files = list_bags(source)
        folders = [Path(source)]
    cfg = None
    for folder in folders:
        c = read_bags_config(folder, missing_ok=True)
        if c is not None:
            check_bags_fit(c, encoder, str(folder))
            cfg = cfg or c
        elif encoder.tile_extractor is not None:
            log.warning("%s: no bags_config.json; cannot check that these bags hold %s "
                        "features", folder, encoder.tile_extractor)
    return files, cfg


# ------------------------------------------------------------------------------- writing
def write_slide_embedding(outdir: Path, slide: str, encoder_name: str, vec: np.ndarray,
                          fmt: str, meta: dict[str, Any]) -> Path:
    """`<outdir>/<slide>.pt` (or `.h5` with `slide_features/<encoder>`), atomically."""
    entry = formats.get(fmt)
    return entry.impl.write_embedding(entry.path(outdir, slide), encoder_name,
                                      np.asarray(vec, np.float32).reshape(-1), meta)


def read_slide_embedding(path: str | os.PathLike, encoder: str | None = None) -> np.ndarray:
    """A saved slide embedding (.pt tensor, or `slide_features/<encoder>` of an .h5)."""
    path = Path(path)
    fmt = formats.suffixes().get(path.suffix.lower())
    if fmt not in FORMATS:
        kinds = formats.choices_text(formats.SLIDE_EMBEDDINGS)
        raise BagError(f"{path}: not a slide-embedding file ({kinds} expected)")
    return formats.get(fmt).impl.read_embedding(path, encoder)


def embedding_exists(outdir: Path, slide: str, name: str, fmt: str) -> bool:
    entry = formats.get(fmt)
    return entry.impl.has_embedding(entry.path(outdir, slide), name)


def embed_bags(files: list[Path], encoder: Any, outdir: Path, report: SlideEmbeddingsReport, *,
               bags_config: dict[str, Any] | None, fmt: str = "pt", overwrite: bool = False
               ) -> SlideEmbeddingsReport:
    """Embed each bag file into `outdir` (existing outputs kept unless `overwrite`); the
    config is written last."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    outdir.mkdir(parents=True, exist_ok=True)
    meta = {"encoder": encoder.name, "slideflow_version": __version__}
    for path in files:
        slide = slide_of(path)
        if not overwrite and embedding_exists(outdir, slide, encoder.name, fmt):
            report.outcomes.append(SlideOutcome(slide, Status.REUSED,
                                                reason="embedding exists"))
            continue
        try:
            bag = read_bag(path)
            if len(bag) == 0:
                raise BagError(f"{path}: empty bag")
            vec = encoder(bag.features, bag.coords, bag.patch_size_level0)
            write_slide_embedding(outdir, slide, encoder.name, vec, fmt,
                                  {**meta, "tiles": len(bag), "bag": str(path)})
            report.outcomes.append(SlideOutcome(slide, Status.DONE, tiles=len(bag)))
        except (SlideflowError, OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, TileMismatchError):
                raise
            report.outcomes.append(SlideOutcome(slide, Status.FAILED).fail(type(exc).__name__,
                                                                           str(exc)))
            log.warning("%s: no slide embedding (%s)", slide, exc)
    _write_config(outdir, encoder, bags_config, files, fmt)
    return report


def finish_run(report: SlideEmbeddingsReport, encoder: Any, start: float
               ) -> SlideEmbeddingsReport:
    """The run's wall time since `start`, and its summary.json + failures.csv in
    `report.outdir`, as every engine entry point leaves them (a write error goes to
    `report.errors`: a full disk must not hide the embeddings made)."""
    report.seconds = time.perf_counter() - start
    report.errors += filter(None, [try_write_run_files(
        report.outdir, report.outcomes, report.seconds, encoder=encoder.name,
        outdir=str(report.outdir))])
    return report


def embed_bag_folder(source: Any, encoder: Any, outdir: str | os.PathLike, *, fmt: str = "pt",
                     overwrite: bool = False) -> SlideEmbeddingsReport:
    """Slide embeddings of a bag folder or a list of bag files (Slideflow's
    ``generate_and_save``); the run's summary.json and failures.csv go to `outdir`."""
    start = time.perf_counter()
    files, cfg = bag_files(source, encoder)
    report = embed_bags(files, encoder, Path(outdir), SlideEmbeddingsReport(Path(outdir)),
                        bags_config=cfg, fmt=fmt, overwrite=overwrite)
    return finish_run(report, encoder, start)


def _write_config(outdir: Path, encoder: Any, bags_cfg: dict[str, Any] | None,
                  files: list[Path], fmt: str) -> None:
    path = outdir / CONFIG_NAME
    entry = {
        "slide_encoder": encoder.dump_config(),
        "num_features": encoder.num_features,
        "tile_bags": sorted({str(p.parent.resolve()) for p in files}),
        "tile_bags_config": bags_cfg,
        "format": fmt,
        "provenance": {"slideflow_version": __version__, "encoder": encoder.name,
                       "weights_sha256": encoder.weights_sha256,
                       "weights_source": encoder.weights_source, "license": encoder.license},
    }
    existing = json.loads(path.read_text()) if path.exists() else {}
    encoders = dict(existing.get("encoders", {}))
    encoders[encoder.name] = entry
    write_json_atomic(path, to_json({"encoders": encoders}))


def rebuild_slide_encoders(outdir_or_config: str | os.PathLike, device: Any = None) -> dict:
    """{name: SlideEncoder} rebuilt from a `slide_embeddings.json` (registered names only)."""
    p = Path(outdir_or_config)
    p = p if p.suffix == ".json" else p / CONFIG_NAME
    cfg = json.loads(p.read_text())
    return {name: rebuild_slide_encoder(e["slide_encoder"], device=device)
            for name, e in cfg.get("encoders", {}).items()}
