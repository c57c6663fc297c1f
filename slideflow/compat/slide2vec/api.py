"""slide2vec's `Model`, `Pipeline` and result types on slideflow's engine (`slideflow.engine.embed`,
`generate_feature_bags`); tensors are torch tensors, as slide2vec returns them."""

from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine import embed
from ...engine.features import SlideJob, generate_bags
from ...errors import InvalidArgumentError
from ...io import read_bag
from ...io.bags import bag_path
from ...model import get_spec
from ...model.slide_encoders import get_slide_spec
from ...slide import slide_name
from .. import report_once
from .config import ExecutionOptions, PreprocessingConfig

#: slide2vec preset names that differ from slideflow's registry spelling
PRESETS = {"h-optimus-0": "h_optimus_0", "h-optimus-1": "h_optimus_1", "h0-mini": "h0_mini",
           "prov-gigapath": "gigapath", "lunit": "lunit_vits8"}


def _torch(x: Any) -> Any:
    import torch

    return None if x is None else torch.as_tensor(x)


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
        if kwargs:
            raise TypeError(f"from_preset() got unexpected keyword arguments {sorted(kwargs)}")
        key = PRESETS.get(str(name).lower(), name)
        try:
            spec = get_slide_spec(key)
        except Exception:  # not a slide encoder: a tile extractor name (checked when built)
            spec = None
        if spec is not None:
            return cls(None, spec.name, device=device)

        return cls(get_spec(key).name, None, device=device)

    def _execution(self, execution: ExecutionOptions | None) -> embed.ExecutionConfig:
        exe = (execution or ExecutionOptions()).to_slideflow()
        if self.device is not None:
            exe = dataclasses.replace(exe, device=self.device)
        return exe

    def _pre(self, preprocessing: PreprocessingConfig | None) -> embed.PreprocessingConfig:
        tile_px = tile_um = None
        if self.slide_encoder is not None:
            spec = get_slide_spec(self.slide_encoder)
            tile_px, tile_um = spec.tile_px, spec.tile_um
        elif preprocessing is None or preprocessing.requested_tile_size_px is None:
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
    return int(len(read_bag(path).features))


def _manifest(path: Any) -> list[dict[str, Any]]:
    import pandas as pd


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


__all__ = ["EmbeddedPatient", "EmbeddedSlide", "Model", "Pipeline", "PRESETS", "RunResult",
           "TileEmbeddingArtifact"]
