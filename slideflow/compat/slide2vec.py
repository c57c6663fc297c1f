"""slide2vec's Python API on slideflow's engine (`slideflow.embed`, `generate_feature_bags`).

    from slideflow.compat.slide2vec import Model, Pipeline, PreprocessingConfig, ExecutionOptions
    model = Model.from_preset("prism")            # slide2vec presets and slideflow's names
    slide = model.embed_slide("a.svs")            # EmbeddedSlide, torch tensors
    result = Pipeline(model=model, preprocessing=PreprocessingConfig(
        requested_spacing_um=0.5, requested_tile_size_px=224),
        execution=ExecutionOptions(output_dir="out")).run(manifest_path="slides.csv")

slide2vec's field names are converted to slideflow's (`requested_spacing_um` x
`requested_tile_size_px` -> tile_um, `overlap` -> stride_div, `masks.min_coverage.tissue` ->
qc_threshold, segmentation -> Otsu QC) and validated; throughput knobs that change no output
are reported once; options slideflow cannot honour are refused naming its equivalent.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import embed
from ..errors import InvalidArgumentError
from ..slide.geometry import LEVEL_TOLERANCE
from . import report_once

#: slide2vec preset names that differ from slideflow's registry spelling
PRESETS = {"h-optimus-0": "hoptimus0", "h-optimus-1": "hoptimus1", "h0-mini": "h0_mini",
           "prov-gigapath": "gigapath", "conch": "conch", "titan": "titan"}
_BACKENDS = {"auto": "auto", "openslide": "openslide", "cucim": "cucim"}
# fields that only change speed or previews (reported once when set to a non-default value)
_SPEED = {"on_the_fly": True, "gpu_decode": False, "adaptive_batching": False,
          "use_supertiles": True, "jpeg_backend": "turbojpeg", "num_cucim_workers": 4,
          "independent_sampling": True}


def _torch(x: Any) -> Any:
    import torch

    return None if x is None else torch.as_tensor(x)


@dataclass(frozen=True, kw_only=True)
class PreprocessingConfig:
    """slide2vec's tiling settings (its field names); `to_slideflow()` converts them."""

    backend: str = "auto"
    requested_spacing_um: float | None = None
    requested_tile_size_px: int | None = None
    requested_region_size_px: int | None = None
    region_tile_multiple: int | None = None
    tolerance: float = 0.05
    overlap: float = 0.0
    read_coordinates_from: Path | None = None
    read_tiles_from: Path | None = None
    on_the_fly: bool = True
    gpu_decode: bool = False
    adaptive_batching: bool = False
    use_supertiles: bool = True
    jpeg_backend: str = "turbojpeg"
    num_cucim_workers: int = 4
    resume: bool = False
    segmentation: dict[str, Any] = field(default_factory=dict)
    filtering: dict[str, Any] = field(default_factory=dict)
    preview: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, Any] = field(default_factory=dict)
    independent_sampling: bool = True

    def __post_init__(self) -> None:
        self._checked()

    def _checked(self) -> dict[str, Any]:
        """slideflow's PreprocessingConfig keywords (tile geometry left to the model)."""
        if self.backend not in _BACKENDS:
            raise InvalidArgumentError(f"backend={self.backend!r}: slideflow reads with "
                                       f"{sorted(_BACKENDS)} (see sf.WSI(backend=))")
        if self.backend != "auto":
            report_once("slide2vec", "backend= is chosen per slide by slideflow ('auto')")
        if abs(float(self.tolerance) - LEVEL_TOLERANCE) > 1e-12:
            raise InvalidArgumentError(f"tolerance={self.tolerance}: slideflow's level "
                                       f"tolerance here is {LEVEL_TOLERANCE} (sf.WSI("
                                       "level_tolerance=) for other values)")
        for name in ("read_coordinates_from", "read_tiles_from"):
            if getattr(self, name) is not None:
                raise InvalidArgumentError(f"{name}=: reuse extracted tiles with "
                                           "extract_tiles() then generate_feature_bags("
                                           "source='tfrecords')")
        for name, default in _SPEED.items():
            if getattr(self, name) != default:
                report_once("slide2vec", f"{name}= changes speed only; slideflow decides it")
        if self.resume:
            report_once("slide2vec", "resume=True: slideflow always reuses finished outputs "
                                     "made with the same settings")
        if self.filtering or self.preview:
            raise InvalidArgumentError("filtering= / preview= are hs2p options; use "
                                       "whitespace_fraction/grayspace_fraction and "
                                       "wsi.preview() in slideflow")
        return {"qc": _qc(self.segmentation), "qc_threshold": _min_tissue(self.masks),
                "stride_div": _stride_div(self.overlap),
                "region_tile_multiple": _regions(self)}

    def to_slideflow(self, tile_px: int | None = None, tile_um: Any = None
                     ) -> embed.PreprocessingConfig:
        """slideflow's config; the geometry from the requested spacing/size, else the
        given defaults (the model's)."""
        kw = self._checked()
        px = self.requested_tile_size_px or tile_px
        if self.requested_spacing_um is not None:
            if px is None:
                raise InvalidArgumentError("requested_spacing_um needs requested_tile_size_px")
            tile_um = float(px) * float(self.requested_spacing_um)
        return embed.PreprocessingConfig(tile_px=px, tile_um=tile_um, **kw)


def _qc(segmentation: dict[str, Any]) -> Any:
    method = (segmentation or {}).get("method", "otsu")
    if method not in ("otsu", "threshold"):
        raise InvalidArgumentError(f"segmentation method {method!r}: slideflow's tissue QC is "
                                   "'otsu' (or qc='blur'/'both', or a mask image)")
    extra = set(segmentation or {}) - {"method", "downsample"}
    if extra:
        raise InvalidArgumentError(f"segmentation keys {sorted(extra)} have no slideflow "
                                   "equivalent")
    return "otsu"


def _min_tissue(masks: dict[str, Any]) -> float | None:
    extra = set(masks or {}) - {"min_coverage"}
    if extra:
        raise InvalidArgumentError(f"masks keys {sorted(extra)}: annotation-mask sampling is "
                                   "not supported; use ROIs (rois=, roi_method=)")
    cov = (masks or {}).get("min_coverage") or {}
    if set(cov) - {"tissue"}:
        raise InvalidArgumentError("masks.min_coverage: only 'tissue' is supported (ROIs "
                                   "select annotated classes in slideflow)")
    return None if "tissue" not in cov else float(cov["tissue"])


def _stride_div(overlap: float) -> int:
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise InvalidArgumentError(f"overlap={overlap} must be in [0, 1)")
    div = 1.0 / (1.0 - overlap)
    if abs(div - round(div)) > 1e-9:
        raise InvalidArgumentError(f"overlap={overlap}: slideflow overlaps tiles by "
                                   "1 - 1/stride_div (0, 0.5, 0.75...)")
    return int(round(div))


def _regions(cfg: PreprocessingConfig) -> int | None:
    k = cfg.region_tile_multiple
    if k is None:
        if cfg.requested_region_size_px is not None:
            raise InvalidArgumentError("requested_region_size_px needs region_tile_multiple")
        return None
    if int(k) < 2:
        raise InvalidArgumentError(f"region_tile_multiple={k} must be >= 2")
    size = cfg.requested_region_size_px
    if size is not None and cfg.requested_tile_size_px and \
            int(size) != int(cfg.requested_tile_size_px) * int(k):
        raise InvalidArgumentError("requested_region_size_px must equal "
                                   "requested_tile_size_px x region_tile_multiple")
    return int(k)


@dataclass(frozen=True, kw_only=True)
class ExecutionOptions:
    """slide2vec's run settings (its field names)."""

    output_dir: str | os.PathLike | None = None
    output_format: str = "pt"
    batch_size: int = 32
    num_workers_per_gpu: int | None = None
    num_preprocessing_workers: int | None = None
    num_gpus: int | None = None
    precision: str | None = None
    prefetch_factor: int = 4
    save_tile_embeddings: bool = False
    save_slide_embeddings: bool = False
    save_latents: bool = False

    def __post_init__(self) -> None:
        if self.output_format not in ("pt", "h5", "npz", "zarr"):
            raise InvalidArgumentError(f"output_format={self.output_format!r}: slideflow "
                                       "writes 'pt', 'h5', 'npz' or 'zarr' bags")
        if self.precision not in (None, "fp16", "bf16", "fp32"):
            raise InvalidArgumentError(f"precision={self.precision!r}: use 'fp16', 'bf16', "
                                       "'fp32' or None")
        if self.save_latents:
            raise InvalidArgumentError("save_latents=True: slide encoders here return their "
                                       "embedding only")
        if self.prefetch_factor != 4:
            report_once("slide2vec", "prefetch_factor= changes speed only")
        embed.ExecutionConfig(batch_size=self.batch_size)  # validates batch_size

    def to_slideflow(self) -> embed.ExecutionConfig:
        mixed = {None: None, "fp32": False, "fp16": "fp16", "bf16": "bf16"}[self.precision]
        return embed.ExecutionConfig(batch_size=self.batch_size,
                                     num_workers=self.num_preprocessing_workers,
                                     mixed_precision=mixed)


@dataclass(kw_only=True)
class EmbeddedSlide:
    """slide2vec's in-memory result; tensors are torch tensors."""

    sample_id: str
    tile_embeddings: Any
    slide_embedding: Any
    x: Any
    y: Any
    tile_size_lv0: int
    image_path: Path
    mask_path: Path | None = None
    annotation: str | None = "tissue"
    num_tiles: int | None = None
    mask_preview_path: Path | None = None
    tiling_preview_path: Path | None = None
    latents: Any = None


@dataclass(kw_only=True)
class EmbeddedPatient:
    patient_id: str
    patient_embedding: Any
    slide_embeddings: dict[str, Any]


@dataclass(kw_only=True)
class TileEmbeddingArtifact:
    sample_id: str
    path: Path
    num_tiles: int


@dataclass(kw_only=True)
class RunResult:
    tile_artifacts: list[TileEmbeddingArtifact]
    hierarchical_artifacts: list[Any]
    slide_artifacts: list[Any]
    patient_artifacts: list[Any] = field(default_factory=list)
    process_list_path: Path | None = None


def _as_s2v(s: embed.EmbeddedSlide, mask_path: Any = None) -> EmbeddedSlide:
    tiles = s.region_embeddings if s.region_embeddings is not None else s.tile_embeddings
    return EmbeddedSlide(sample_id=s.sample_id, tile_embeddings=_torch(tiles),
                         slide_embedding=_torch(s.slide_embedding), x=_torch(s.x),
                         y=_torch(s.y), tile_size_lv0=int(s.tile_size_lv0),
                         image_path=Path(s.image_path), num_tiles=int(s.num_tiles),
                         mask_path=Path(mask_path) if mask_path else None)


class Model:
    """A tile extractor and, for slide- or patient-level presets, its slide encoder."""

    def __init__(self, tile_extractor: Any, slide_encoder: Any = None, *,
                 device: str | None = None):
        self.tile_extractor, self.slide_encoder, self.device = tile_extractor, slide_encoder, \
            device

    @classmethod
    def from_preset(cls, name: str, *, device: str | None = None, **kwargs: Any) -> Model:
        """slide2vec's preset name or any slideflow extractor / slide encoder name."""
        from ..model.slide_encoders import get_slide_spec

        if kwargs:
            raise TypeError(f"from_preset() got unexpected keyword arguments {sorted(kwargs)}")
        key = PRESETS.get(str(name).lower(), name)
        try:
            spec = get_slide_spec(key)
        except Exception:  # not a slide encoder: a tile extractor name (checked when built)
            spec = None
        if spec is not None:
            return cls(None, spec.name, device=device)
        from ..model import get_spec

        return cls(get_spec(key).name, None, device=device)

    def _execution(self, execution: ExecutionOptions | None) -> embed.ExecutionConfig:
        exe = (execution or ExecutionOptions()).to_slideflow()
        if self.device is not None:
            exe = embed.ExecutionConfig(exe.batch_size, exe.num_workers, self.device,
                                        exe.mixed_precision)
        return exe

    def _pre(self, preprocessing: PreprocessingConfig | None) -> embed.PreprocessingConfig:
        from ..model.slide_encoders import get_slide_spec

        tile_px = tile_um = None
        if self.slide_encoder is not None:
            spec = get_slide_spec(self.slide_encoder)
            tile_px, tile_um = spec.tile_px, spec.tile_um
        elif preprocessing is None or preprocessing.requested_tile_size_px is None:
            from ..model import get_spec

            tile_px = get_spec(self.tile_extractor).input_px
            tile_um = tile_px * 0.5  # slide2vec's default spacing for tile encoders
        return (preprocessing or PreprocessingConfig()).to_slideflow(tile_px, tile_um)

    def embed_slide(self, slide: Any, *, preprocessing: PreprocessingConfig | None = None,
                    execution: ExecutionOptions | None = None) -> EmbeddedSlide:
        return self.embed_slides([slide], preprocessing=preprocessing, execution=execution)[0]

    def embed_slides(self, slides: Any, *, preprocessing: PreprocessingConfig | None = None,
                     execution: ExecutionOptions | None = None) -> list[EmbeddedSlide]:
        rows = [_row(s) for s in slides]
        exe, pre = self._execution(execution), self._pre(preprocessing)
        resolved = embed._resolve(self.tile_extractor, self.slide_encoder, exe)
        return [_as_s2v(embed.embed_slide(r["image_path"], preprocessing=pre, execution=exe,
                                          sample_id=r["sample_id"], _resolved=resolved),
                        r.get("mask_path")) for r in rows]

    def embed_patient(self, slides: Any, *, patient_id: str,
                      preprocessing: PreprocessingConfig | None = None,
                      execution: ExecutionOptions | None = None) -> EmbeddedPatient:
        rows = [{**_row(s), "patient_id": patient_id} for s in slides]
        return self.embed_patients(rows, preprocessing=preprocessing, execution=execution)[0]

    def embed_patients(self, manifest: Any, *, preprocessing: PreprocessingConfig | None = None,
                       execution: ExecutionOptions | None = None) -> list[EmbeddedPatient]:
        out = embed.embed_patients(manifest, self.tile_extractor, self.slide_encoder or "mean",
                                   preprocessing=self._pre(preprocessing),
                                   execution=self._execution(execution))
        return [EmbeddedPatient(patient_id=p.patient_id,
                                patient_embedding=_torch(p.patient_embedding),
                                slide_embeddings={k: _torch(v) for k, v in
                                                  p.slide_embeddings.items()}) for p in out]


def _row(item: Any) -> dict[str, Any]:
    from ..slide import slide_name

    if isinstance(item, (str, os.PathLike)):
        return {"image_path": Path(item), "sample_id": slide_name(item)}
    if isinstance(item, dict) and "image_path" in item:
        if item.get("mask_path"):
            raise InvalidArgumentError("mask_path: pass a tissue mask through "
                                       "Pipeline (manifest column mask_path)")
        return {"image_path": Path(item["image_path"]),
                "sample_id": item.get("sample_id") or slide_name(item["image_path"])}
    raise TypeError(f"a slide is a path or a dict with image_path, not {type(item).__name__}")


class Pipeline:
    """Manifest-driven batch run writing tile embeddings to disk (slideflow bags)."""

    def __init__(self, *, model: Model, preprocessing: PreprocessingConfig | None = None,
                 execution: ExecutionOptions | None = None):
        self.model, self.preprocessing = model, preprocessing or PreprocessingConfig()
        self.execution = execution or ExecutionOptions()
        if self.execution.output_dir is None:
            raise InvalidArgumentError("ExecutionOptions(output_dir=...) is needed by Pipeline")
        if self.execution.num_gpus and self.execution.num_gpus > 1:
            report_once("slide2vec", "num_gpus>1: use generate_feature_bags(devices=[...]) "
                                     "for one worker per GPU; this run uses one device")

    def run(self, *, manifest_path: str | os.PathLike) -> RunResult:
        from ..features import SlideJob, generate_bags
        from ..io.bags import bag_path

        if self.model.slide_encoder is not None:
            raise InvalidArgumentError("Pipeline runs tile encoders here; for slide-level "
                                       "models use sf.generate_slide_embeddings or "
                                       "Model.embed_slides")
        pre = self.model._pre(self.preprocessing)
        exe = self.execution
        rows = _manifest(manifest_path)
        jobs = [SlideJob(name=r["sample_id"], slide_path=r["image_path"], mask=r["mask_path"])
                for r in rows]
        out = Path(exe.output_dir) / "tile_embeddings"
        report = generate_bags(jobs, self.model.tile_extractor, out, int(pre.tile_px),
                               pre.tile_um, selection=pre.selection(), fmt=exe.output_format,
                               num_threads=exe.num_preprocessing_workers, progress=False)
        process = Path(exe.output_dir) / "process_list.csv"
        with open(process, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", "image_path", "status", "error"])
            for r in rows:
                sid = r["sample_id"]
                w.writerow([sid, r["image_path"], "failed" if sid in report.failed else
                            "success", report.failed.get(sid, "")])
        arts = [TileEmbeddingArtifact(sample_id=o.slide, path=path, num_tiles=_rows(path))
                for o in report.outcomes if o.status in ("done", "reused")
                for path in [bag_path(out, o.slide, exe.output_format)]]
        return RunResult(tile_artifacts=arts, hierarchical_artifacts=[], slide_artifacts=[],
                         process_list_path=process)


def _rows(path: Path) -> int:
    from ..io import read_bag

    return int(len(read_bag(path).features))


def _manifest(path: Any) -> list[dict[str, Any]]:
    import pandas as pd

    from ..slide import slide_name

    df = pd.read_csv(path, dtype=str)
    if "image_path" not in df.columns:
        raise InvalidArgumentError(f"{path}: the manifest needs an image_path column "
                                   "(optional: sample_id, mask_path)")
    rows = []
    for r in df.to_dict("records"):
        mask = r.get("mask_path")
        rows.append({"image_path": Path(r["image_path"]),
                     "sample_id": r.get("sample_id") or slide_name(r["image_path"]),
                     "mask_path": Path(mask) if isinstance(mask, str) and mask else None})
    return rows


__all__ = ["EmbeddedPatient", "EmbeddedSlide", "ExecutionOptions", "Model", "Pipeline",
           "PreprocessingConfig", "RunResult", "TileEmbeddingArtifact"]
