"""slide2vec's `PreprocessingConfig` and `ExecutionOptions` (its field names), converted to
slideflow's `embed.PreprocessingConfig` / `embed.ExecutionConfig` and validated.

`requested_spacing_um` x `requested_tile_size_px` -> tile_um, `overlap` -> stride_div,
`masks.min_coverage.tissue` -> qc_threshold, `segmentation` -> Otsu QC; throughput knobs that
change no output are reported once; options slideflow cannot honour are refused naming its
equivalent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine import embed
from ...errors import InvalidArgumentError
from ...slide.geometry import LEVEL_TOLERANCE
from .. import report_once

_BACKENDS = {"auto": "auto", "openslide": "openslide", "cucim": "cucim"}
# fields that only change speed or previews (reported once when set to a non-default value)
_SPEED = {"on_the_fly": True, "gpu_decode": False, "adaptive_batching": False,
          "use_supertiles": True, "jpeg_backend": "turbojpeg", "num_cucim_workers": 4,
          "independent_sampling": True}


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
                                     num_threads=self.num_preprocessing_workers,
                                     mixed_precision=mixed)


__all__ = ["ExecutionOptions", "PreprocessingConfig"]
