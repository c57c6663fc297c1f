"""In-memory embeddings of slides and patients (slide2vec's shape, on slideflow's engine).

    embed_slide(path, tile_extractor=..., slide_encoder=...) -> EmbeddedSlide
    embed_slides([...]) -> [EmbeddedSlide, ...]
    embed_patient(slides, patient_id=...) -> EmbeddedPatient
    embed_patients(manifest) -> [EmbeddedPatient, ...] in order of first appearance

Settings are frozen, validated dataclasses (`PreprocessingConfig`, `ExecutionConfig`). A
patient embedding is the mean of its slide embeddings, or the patient stage of a patient-level
encoder (MOOZY's case transformer over its slide embeddings).
``region_tile_multiple=k`` also groups the tile embeddings by parent region of k x k tiles:
``region_embeddings`` (R, k*k, D), ``region_mask`` (R, k*k) and ``region_x``/``region_y``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideflowError
from ..io.manifest import read_manifest
from ..model.slide_encoders import get_slide_spec
from ..slide import slide_name
from ..validate import optional_positive_int, positive_int, renamed
from .pipeline import RowCollector, run_features
from .selection import TileSelection, open_wsi
from .slide_embeddings import check_geometry, resolve_slide_encoder
from .slide_job import resolve_extractor


@dataclass(frozen=True)
class PreprocessingConfig:
    """Which tiles: size in pixels and microns ('20x' or um), QC and background filters."""

    tile_px: int | None = None
    tile_um: Any = None
    qc: Any = None
    whitespace_fraction: float | None = None
    grayspace_fraction: float | None = None
    mpp: float | None = None
    max_tiles: int | None = None
    region_tile_multiple: int | None = None
    qc_threshold: float | None = None  # tissue fraction a tile needs (None: QC's default)
    stride_div: int = 1

    def __post_init__(self) -> None:
        for name in ("tile_px", "region_tile_multiple", "max_tiles"):
            optional_positive_int(getattr(self, name), name)
        self.selection()  # validates qc, qc_threshold, stride_div

    def selection(self) -> TileSelection:
        """The tile selection these settings mean."""
        extra = {} if self.qc_threshold is None else {"qc_threshold": self.qc_threshold}
        return TileSelection(qc=self.qc, whitespace_fraction=self.whitespace_fraction,
                             grayspace_fraction=self.grayspace_fraction,
                             stride_div=self.stride_div, **extra)


@dataclass(frozen=True)
class ExecutionConfig:
    """How to run: model batch size, reader threads, device, mixed precision.

    `num_threads` is the reader-thread count under the name used everywhere else (API, CLI,
    Slideflow 3); `num_workers=`, its old name here, still works with one DeprecationWarning.
    """

    batch_size: int = 64
    num_threads: int | None = None
    device: str | None = None
    mixed_precision: bool | None = None
    num_workers: InitVar[int | None] = None

    def __post_init__(self, num_workers: int | None) -> None:
        object.__setattr__(self, "num_threads",
                           renamed(self.num_threads, num_workers, "num_threads", "num_workers"))
        positive_int(self.batch_size, "batch_size")
        optional_positive_int(self.num_threads, "num_threads")


@dataclass
class EmbeddedSlide:
    sample_id: str
    tile_embeddings: np.ndarray            # (N, D) float32
    slide_embedding: np.ndarray | None     # (E,) or None without a slide encoder
    x: np.ndarray                          # (N,) level-0 top-left
    y: np.ndarray
    tile_size_lv0: int
    image_path: Path
    num_tiles: int
    region_embeddings: np.ndarray | None = None  # (R, k*k, D)
    region_mask: np.ndarray | None = None        # (R, k*k) bool: tile present
    region_x: np.ndarray | None = None
    region_y: np.ndarray | None = None


@dataclass
class EmbeddedPatient:
    patient_id: str
    patient_embedding: np.ndarray
    slide_embeddings: dict[str, np.ndarray] = field(default_factory=dict)


def group_regions(features: np.ndarray, coords: np.ndarray, tile_size_lv0: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tiles grouped by parent region of k x k tiles (row-major inside a region).

    Regions are anchored at the top-left tile of the slide's grid; only regions holding at
    least one tile are returned, absent children are zero rows with mask False.
    Returns (regions (R, k*k, D), mask (R, k*k), region top-left coords (R, 2)).
    """
    if len(coords) == 0:
        return (np.zeros((0, k * k, features.shape[1]), np.float32), np.zeros((0, k * k), bool),
                np.zeros((0, 2), np.int64))
    origin = coords.min(axis=0)
    cells = (coords - origin) // int(tile_size_lv0)
    parent = cells // k
    child = (cells[:, 1] % k) * k + (cells[:, 0] % k)
    keys, inverse = np.unique(parent[:, 1] * (parent[:, 0].max() + 1) + parent[:, 0],
                              return_inverse=True)
    regions = np.zeros((len(keys), k * k, features.shape[1]), np.float32)
    mask = np.zeros((len(keys), k * k), bool)
    regions[inverse, child] = features
    mask[inverse, child] = True
    first = np.zeros((len(keys), 2), np.int64)
    first[inverse] = parent
    return regions, mask, origin + first * k * int(tile_size_lv0)


def _resolve(tile_extractor: Any, slide_encoder: Any, execution: ExecutionConfig):
    enc = None if slide_encoder is None else _resolve_encoder(slide_encoder, execution)
    name = tile_extractor if tile_extractor is not None else (enc.tile_extractor if enc else None)
    if name is None:
        raise SlideflowError("embed_slide needs tile_extractor= (or a slide encoder that names "
                             "its tile extractor)")
    kw = {"batch_size": execution.batch_size, "device": execution.device}
    if execution.mixed_precision is not None:
        kw["mixed_precision"] = execution.mixed_precision
    ext = resolve_extractor(name, **kw) if isinstance(name, str) else name
    if enc is not None:
        enc.check_features(ext.num_features, ext.name)
    return ext, enc


def embed_slide(path: str | os.PathLike, tile_extractor: Any = None, slide_encoder: Any = None,
                *, preprocessing: PreprocessingConfig | None = None,
                execution: ExecutionConfig | None = None, sample_id: str | None = None,
                _resolved: tuple[Any, Any] | None = None) -> EmbeddedSlide:
    """Tile (and slide) embeddings of one slide, in memory (see module doc)."""
    pre = preprocessing or PreprocessingConfig()
    exe = execution or ExecutionConfig()
    ext, enc = _resolved or _resolve(tile_extractor, slide_encoder, exe)
    tile_px = pre.tile_px if pre.tile_px is not None else (enc.spec.tile_px if enc else None)
    tile_um = pre.tile_um if pre.tile_um is not None else (enc.spec.tile_um if enc else None)
    if tile_px is None or tile_um is None:
        raise SlideflowError("give preprocessing=PreprocessingConfig(tile_px=..., tile_um=...)")
    if enc is not None:
        check_geometry(enc, tile_px, tile_um, str(path))
    selection = pre.selection()
    with open_wsi(path, int(tile_px), tile_um, selection, mpp=pre.mpp) as wsi:
        coords = wsi.coords
        if pre.max_tiles is not None and len(coords) > pre.max_tiles:
            keep = np.sort(np.random.default_rng(0).choice(len(coords), pre.max_tiles,
                                                           replace=False))
            coords = coords[keep]
        collector = RowCollector(ext.num_features)
        run_features(ext, wsi.tiles(batch_size=ext.batch_size, num_threads=exe.num_threads,
                                    coords=coords), collector)
        feats, coords = collector.result()
        size = int(wsi.full_extract_px)
    feats, coords = feats.copy(), coords.copy()
    if len(feats) == 0:
        raise SlideflowError(f"{path}: no tiles survived QC/filters; nothing to embed")
    slide_vec = enc(feats, coords, size) if enc is not None else None
    out = EmbeddedSlide(sample_id or slide_name(path), feats, slide_vec, coords[:, 0].copy(),
                        coords[:, 1].copy(), size, Path(path), len(feats))
    if pre.region_tile_multiple:
        k = int(pre.region_tile_multiple)
        regions, mask, rc = group_regions(feats, coords, size, k)
        out.region_embeddings, out.region_mask = regions, mask
        out.region_x, out.region_y = rc[:, 0], rc[:, 1]
    return out


def embed_slides(paths: Iterable[str | os.PathLike], tile_extractor: Any = None,
                 slide_encoder: Any = None, *, preprocessing: PreprocessingConfig | None = None,
                 execution: ExecutionConfig | None = None) -> list[EmbeddedSlide]:
    """`embed_slide` over several slides with one model load."""
    exe = execution or ExecutionConfig()
    resolved = _resolve(tile_extractor, slide_encoder, exe)
    return [embed_slide(p, preprocessing=preprocessing, execution=exe, _resolved=resolved)
            for p in paths]


def _slide_vector(item: Any) -> tuple[str, np.ndarray]:
    if isinstance(item, EmbeddedSlide):
        if item.slide_embedding is None:
            raise SlideflowError(f"{item.sample_id}: embedded without a slide encoder")
        return item.sample_id, np.asarray(item.slide_embedding, np.float32)
    if isinstance(item, tuple) and len(item) == 2:
        return str(item[0]), np.asarray(item[1], np.float32).reshape(-1)
    raise TypeError("slides must be EmbeddedSlide objects or (sample_id, vector) pairs")


def embed_patient(slides: Sequence[Any], patient_id: str,
                  slide_encoder: Any = None) -> EmbeddedPatient:
    """One patient's embedding from its slide embeddings (EmbeddedSlide or (id, vector)
    items): the patient stage of a patient-level `slide_encoder` (e.g. MOOZY), else the mean."""
    pairs = [_slide_vector(s) for s in slides]
    if not pairs:
        raise SlideflowError(f"patient {patient_id!r} has no slides")
    widths = {v.shape for _, v in pairs}
    if len(widths) != 1:
        raise SlideflowError(f"patient {patient_id!r}: slide embeddings of different widths "
                             f"{sorted(widths)}; use one slide encoder")
    vecs = np.stack([v for _, v in pairs])
    if slide_encoder is not None and hasattr(slide_encoder, "aggregate"):
        return EmbeddedPatient(str(patient_id), slide_encoder.aggregate(vecs), dict(pairs))
    return EmbeddedPatient(str(patient_id), vecs.mean(axis=0), dict(pairs))


def embed_patients(manifest: Any, tile_extractor: Any = None, slide_encoder: Any = "mean", *,
                   preprocessing: PreprocessingConfig | None = None,
                   execution: ExecutionConfig | None = None,
                   slide_embeddings: Mapping[str, Any] | None = None) -> list[EmbeddedPatient]:
    """One EmbeddedPatient per patient of `manifest`, in order of first appearance.

    `manifest`: a CSV (`slideflow.io.manifest`: paths relative to the CSV; `spacing_at_level_0`
    and `mask_path` honoured per slide), a DataFrame or dicts, with patient_id and image_path.

    ``slide_embeddings`` ({sample_id: vector}) skips embedding those slides.
    """
    from dataclasses import replace


    rows = read_manifest(manifest, required=("patient_id", "image_path"))
    pre = preprocessing or PreprocessingConfig()
    exe = execution or ExecutionConfig()
    known = dict(slide_embeddings or {})
    resolved = None
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for r in rows:
        sid = r.sample_id
        if sid is not None and sid in known:
            vec = np.asarray(known[sid], np.float32)
        else:
            resolved = resolved or _resolve(tile_extractor, slide_encoder, exe)
            # the row's spacing and tissue mask override the shared settings, as in `features`
            row_pre = replace(pre, mpp=r.mpp if r.mpp is not None else pre.mpp,
                              qc=str(r.mask_path) if r.mask_path is not None else pre.qc)
            emb = embed_slide(r.image_path, preprocessing=row_pre, execution=exe,
                              sample_id=sid, _resolved=resolved)
            sid, vec = _slide_vector(emb)
        groups.setdefault(str(r.patient_id), []).append((sid, vec))
    encoder = resolved[1] if resolved is not None else None
    if encoder is None and slide_encoder is not None and _patient_level(slide_encoder):
        encoder = _resolve_encoder(slide_encoder, exe)  # every slide was given: model only
    return [embed_patient(pairs, pid, encoder) for pid, pairs in groups.items()]


def _patient_level(slide_encoder: Any) -> bool:
    if isinstance(slide_encoder, str):
        return get_slide_spec(slide_encoder).level == "patient"
    return getattr(getattr(slide_encoder, "spec", None), "level", "slide") == "patient"


def _resolve_encoder(slide_encoder: Any, execution: ExecutionConfig):
    kw = {"device": execution.device} if isinstance(slide_encoder, str) else {}
    return resolve_slide_encoder(slide_encoder, **kw)
