"""TIAToolbox's `DeepFeatureExtractor` on slideflow's engine.

    from slideflow.compat.tiatoolbox import DeepFeatureExtractor
    extractor = DeepFeatureExtractor("efficientnet_lite0_imagenet", batch_size=32)
    out = extractor.run(["a.svs"], patch_mode=False, save_dir="feats", output_type="zarr",
                        input_resolutions=[{"units": "mpp", "resolution": 0.5}],
                        patch_input_shape=(224, 224))
    out  # {"a.svs": Path("feats/a.zarr")}

`model` is a slideflow extractor name (`sf.list_extractors()`) or a built extractor. WSI mode
runs `generate_feature_bags(format='zarr')`: each store holds TIAToolbox's `probabilities`
(N, D) and `coordinates` (N, 4) level-0 boxes. Patch mode embeds an (N, H, W, 3) uint8 array
or a list of image files. TIAToolbox's `auto_get_mask` (default True) is Otsu tissue QC;
`masks=` gives one tissue-mask image per slide instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import slideflow as sf

from ..engine.features import generate_bags, jobs_from_paths
from ..engine.selection import TileSelection
from ..errors import InvalidArgumentError
from ..io import read_bag
from . import report_once

OUTPUT_TYPES = ("dict", "zarr")
#: run() keywords TIAToolbox documents that change nothing here (reported once)
_NO_EFFECT = {
    "memory_threshold": "slideflow streams features to disk; memory_threshold has no effect",
    "verbose": "verbose= only switches the progress bar here",
}
#: run() keywords TIAToolbox documents for classifiers, refused with our equivalent
_REFUSED = {
    "class_dict": "feature extraction has no classes; class_dict= does not apply",
    "labels": "labels belong in slideflow's annotations (sf.create_project(..., annotations=))",
    "return_labels": "feature extraction returns no labels",
    "return_probabilities": "features are always returned (TIAToolbox's 'probabilities')",
    "scale_factor": "coordinates are level-0 boxes already; scale_factor= does not apply",
    "output_file": "WSI outputs are <save_dir>/<slide>.zarr (one store per slide)",
}


class DeepFeatureExtractor:
    """TIAToolbox's engine signature: (model, batch_size, num_workers, weights, *, device,
    verbose)."""

    def __init__(self, model: Any, batch_size: int = 8, num_workers: int = 0,
                 weights: str | os.PathLike | None = None, *, device: str = "cpu",
                 verbose: bool = True):
        self.model = _extractor(model, weights, device, batch_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.device = device
        self.verbose = bool(verbose)

    def run(self, images: Any, *, masks: Sequence[Any] | None = None,
            input_resolutions: Sequence[Mapping[str, Any]] | None = None,
            patch_input_shape: Sequence[int] | None = None, ioconfig: Any = None,
            patch_mode: bool = True, save_dir: str | os.PathLike | None = None,
            overwrite: bool = False, output_type: str = "dict", **kwargs: Any) -> Any:
        """Features of patches (patch_mode=True) or of whole slides (see module doc)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be 'zarr' or 'dict', got {output_type!r}")
        kwargs = _check_kwargs(kwargs)
        if "batch_size" in kwargs:
            self.model.batch_size = int(kwargs.pop("batch_size"))
        if patch_mode:
            if masks is not None:
                raise InvalidArgumentError("masks= is used in WSI mode only (patch_mode=False)")
            return self._patches(images, save_dir, output_type)
        return self._slides(images, masks, input_resolutions, patch_input_shape, ioconfig,
                            save_dir, overwrite, output_type, kwargs)

    # ------------------------------------------------------------------ engine hooks
    def infer_wsi(self, dataloader: Any, save_path: Any, **kwargs: Any) -> Any:
        """TIAToolbox's per-WSI inference hook: slideflow reads slides itself."""
        raise NotImplementedError("infer_wsi(dataloader, ...) is TIAToolbox's engine hook; "
                                  "slideflow reads the slide itself: use run([wsi], "
                                  "patch_mode=False, save_dir=...)")

    def post_process_patches(self, raw_predictions: Any, **kwargs: Any) -> Any:
        """Features need no post-processing: returned unchanged (as TIAToolbox does)."""
        _check_kwargs(dict(kwargs))
        return raw_predictions

    def save_predictions(self, processed_predictions: Mapping[str, Any], output_type: str,
                         save_path: str | os.PathLike | None = None, **kwargs: Any) -> Any:
        """`{"probabilities", "coordinates"}` as a zarr store at `save_path`, or the dict."""
        _check_kwargs(dict(kwargs))
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be 'zarr' or 'dict', got {output_type!r}")
        out = {k: np.asarray(v) for k, v in processed_predictions.items()
               if k in ("probabilities", "coordinates")}
        if output_type == "dict":
            return out
        if save_path is None:
            raise InvalidArgumentError("output_type='zarr' needs save_path=")
        return _write_zarr(Path(save_path), out)

    # ------------------------------------------------------------------ patch mode
    def _patches(self, images: Any, save_dir: Any, output_type: str) -> Any:
        tiles = _load_patches(images)
        feats = np.asarray(self.model(tiles), np.float32)
        out = {"probabilities": feats}
        if output_type == "dict":
            return out
        if save_dir is None:
            raise InvalidArgumentError("output_type='zarr' needs save_dir=")
        return _write_zarr(Path(save_dir) / "output.zarr", out)

    # ------------------------------------------------------------------ WSI mode
    def _slides(self, images: Any, masks: Any, resolutions: Any, shape: Any, ioconfig: Any,
                save_dir: Any, overwrite: bool, output_type: str, kwargs: dict[str, Any]
                ) -> dict[Any, Any]:
        if save_dir is None:
            raise InvalidArgumentError("WSI mode (patch_mode=False) needs save_dir=")
        if isinstance(images, (str, os.PathLike)) or hasattr(images, "input_path"):
            images = [images]
        images = list(images)
        paths = [Path(getattr(i, "input_path", i)) for i in images]  # TIAToolbox's WSIReader
        tile_px, tile_um, stride_div = _geometry(self.model, resolutions, shape, ioconfig,
                                                 kwargs.pop("stride_shape", None))
        jobs = jobs_from_paths(paths)
        if masks is not None:
            masks = list(masks)
            if len(masks) != len(jobs):
                raise InvalidArgumentError(f"masks= has {len(masks)} entries for {len(jobs)} "
                                           "images; give one mask per image")
            for job, mask in zip(jobs, masks):
                job.mask = Path(mask)
        auto_mask = bool(kwargs.pop("auto_get_mask", True))
        selection = TileSelection(qc="otsu" if auto_mask else None, stride_div=stride_div)
        report = generate_bags(jobs, self.model, save_dir, tile_px, tile_um, selection=selection,
                               fmt="zarr", force_regenerate=bool(overwrite),
                               num_threads=kwargs.pop("num_workers", None) or None,
                               progress=self.verbose)
        out: dict[Any, Any] = {}
        for image, job in zip(images, jobs):
            if job.name in report.failed:
                raise RuntimeError(f"{image}: {report.failed[job.name]}")
            path = Path(save_dir) / f"{job.name}.zarr"
            if output_type == "zarr":
                out[image] = path
            else:
                bag = read_bag(path)
                out[image] = {"probabilities": bag.features, "coordinates": bag.boxes()}
        return out


def _write_zarr(dest: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    import zarr

    group = zarr.open_group(str(dest), mode="w")
    for key, value in arrays.items():
        group.create_array(key, data=value)
    return dest


def _extractor(model: Any, weights: Any, device: str, batch_size: int) -> Any:
    if isinstance(model, str):
        kw: dict[str, Any] = {"device": device, "batch_size": int(batch_size)}
        if weights is not None:
            kw["weights"] = weights
        return sf.build_feature_extractor(model, **kw)
    if hasattr(model, "num_features") and hasattr(model, "embed"):
        if weights is not None:
            raise InvalidArgumentError("weights= goes with a model name; this extractor is "
                                       "built already")
        model.batch_size = int(batch_size)
        return model
    raise TypeError(f"model must be a slideflow extractor name or a built extractor, not "
                    f"{type(model).__name__}; register a torch module with "
                    "@slideflow.model.register_torch and pass its name")


def _check_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    known = {"batch_size", "num_workers", "device", "auto_get_mask", "stride_shape"}
    for key in list(kwargs):
        if key in _REFUSED:
            raise InvalidArgumentError(f"{key}=: {_REFUSED[key]}")
        if key in _NO_EFFECT:
            report_once("TIAToolbox", _NO_EFFECT[key])
            kwargs.pop(key)
        elif key not in known:
            raise TypeError(f"run() got an unexpected keyword argument {key!r}")
    if "device" in kwargs:
        report_once("TIAToolbox", "device= belongs to DeepFeatureExtractor(...); run(device=) "
                                  "is ignored in favour of it")
        kwargs.pop("device")
    return kwargs


def _geometry(ext: Any, resolutions: Any, shape: Any, ioconfig: Any, stride: Any
              ) -> tuple[int, Any, int]:
    """(tile_px, tile_um, stride_div) from TIAToolbox's resolution, shape and stride."""
    if ioconfig is not None:
        get = ioconfig.get if isinstance(ioconfig, Mapping) else (
            lambda k: getattr(ioconfig, k, None))
        resolutions = resolutions or get("input_resolutions")
        shape = shape or get("patch_input_shape")
        stride = stride or get("stride_shape")
    if shape is None:
        shape = (ext.input_px, ext.input_px)
    h, w = (int(v) for v in shape)
    if h != w:
        raise InvalidArgumentError(f"patch_input_shape={tuple(shape)}: slideflow tiles are "
                                   "square; give (n, n)")
    if not resolutions:
        raise InvalidArgumentError("give input_resolutions=[{'units': 'mpp', 'resolution': "
                                   "0.5}] (or an ioconfig) for WSI mode")
    if len(resolutions) != 1:
        raise InvalidArgumentError("one input resolution is supported (a single-head model)")
    units, value = resolutions[0].get("units"), float(resolutions[0].get("resolution"))
    if units == "mpp":
        tile_um: Any = h * value
    elif units == "power":
        tile_um = f"{value:g}x"
    else:
        raise InvalidArgumentError(f"input resolution units {units!r} are not supported; use "
                                   "'mpp' (microns per pixel) or 'power' (magnification)")
    stride_div = 1
    if stride is not None:
        s = int(stride[0]) if isinstance(stride, (tuple, list)) else int(stride)
        if s <= 0 or h % s:
            raise InvalidArgumentError(f"stride_shape={stride}: slideflow steps by tile / n "
                                       f"(stride_div); use a stride dividing {h}")
        stride_div = h // s
    return h, tile_um, stride_div


def _load_patches(images: Any) -> np.ndarray:
    if isinstance(images, np.ndarray):
        arr = images
    else:
        from PIL import Image

        arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InvalidArgumentError(f"patches must be (N, H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise InvalidArgumentError(f"patches must be uint8, got {arr.dtype}")
    return arr


__all__ = ["DeepFeatureExtractor"]
