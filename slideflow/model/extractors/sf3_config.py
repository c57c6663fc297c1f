"""The extractor entry of bags_config.json in the form Slideflow 3 rebuilds, ours kept beside.

Slideflow 3's ``rebuild_extractor`` imports the module of ``extractor['class']`` and calls the
class with ``extractor['kwargs']``; keys it does not know are ignored. So where Slideflow 3 has
a class computing the same features (same weights, same preprocessing), the entry names that
class and its keywords, and our own ``{class, kwargs}`` goes under ``extractor['slideflow']``
for our rebuild:

    {"class": "slideflow.model.extractors.TorchImagenetLayerExtractor",
     "kwargs": {"model_name": "resnet50", "tile_px": 256, "center_crop": false, ...},
     "slideflow": {"class": "slideflow.model.FeatureExtractor",
                   "kwargs": {"name": "resnet50_imagenet"}}}

Where it has none (random or custom weights, our preprocessing order, other layers), the entry
is ours alone, as before.
"""

from __future__ import annotations

from typing import Any

from ...io.bags_config import OWN_EXTRACTOR_KEY as OURS_KEY
from .spec import SF3_MODULE

SF3_IMAGENET_CLASS = SF3_MODULE + "TorchImagenetLayerExtractor"
# our registry name -> Slideflow 3's `model_name` for TorchImagenetLayerExtractor
IMAGENET_MODEL_NAMES = {"resnet18_imagenet": "resnet18", "resnet34_imagenet": "resnet34",
                        "resnet50_imagenet": "resnet50", "densenet121_imagenet": "densenet121"}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _transform_kwargs(pre: Any) -> dict[str, Any] | None:
    """Slideflow 3's build_transform keywords for our `Preprocess`, or None when Slideflow 3's
    transform (crop, then resize to a square or shorter side) cannot reproduce it."""
    crop = pre.center_crop or False
    if pre.resize and pre.resize_px:
        resize: Any = int(pre.resize_px)
    elif pre.resize and not (crop and pre.order == "resize_crop"):
        return None  # 'squash to input_px when needed': no Slideflow 3 spelling
    else:
        resize = False
    if resize and crop and pre.order != "crop_resize":
        return None
    return {"center_crop": int(crop) if crop else False, "resize": resize,
            "interpolation": pre.interpolation, "antialias": bool(pre.antialias),
            "norm_mean": list(pre.mean), "norm_std": list(pre.std)}


def sf3_entry(extractor: Any, tile_px: int) -> dict[str, Any] | None:
    """Slideflow 3's ``{class, kwargs}`` for `extractor`, or None where it has no equivalent."""
    own = getattr(extractor, "_config_kwargs", None)
    spec = getattr(extractor, "spec", None)
    pre = getattr(extractor, "transform", None)
    if own is None or spec is None or not getattr(extractor, "pretrained", False):
        return None
    if not all(hasattr(pre, a) for a in ("resize", "resize_px", "center_crop", "order",
                                         "interpolation", "antialias", "mean", "std")):
        return None  # a user's own transform (register_torch): no Slideflow 3 spelling
    transform = _transform_kwargs(pre)
    if transform is None or own.get("layers") not in (None, "postconv", ["postconv"]):
        return None
    if extractor.name in IMAGENET_MODEL_NAMES:
        if own.get("weights") is not None or (tuple(pre.mean), tuple(pre.std)) != (
                _IMAGENET_MEAN, _IMAGENET_STD):
            return None
        return {"class": SF3_IMAGENET_CLASS,
                "kwargs": {**transform, "model_name": IMAGENET_MODEL_NAMES[extractor.name],
                           "tile_px": int(tile_px)}}
    if not spec.sf3_class:
        return None
    kwargs = dict(transform)
    for theirs, (key, default) in spec.sf3_kwargs.items():
        kwargs[theirs] = own.get(key, default)
    if own.get("weights") is not None:
        kwargs["weights"] = str(own["weights"])
    return {"class": spec.sf3_class, "kwargs": kwargs}


def bags_entry(extractor: Any, tile_px: int) -> dict[str, Any]:
    """The ``extractor`` entry of bags_config.json (see module doc)."""
    own = extractor.dump_config()
    theirs = sf3_entry(extractor, tile_px)
    if theirs is None:
        return own
    return {**theirs, OURS_KEY: own}


__all__ = ["IMAGENET_MODEL_NAMES", "SF3_IMAGENET_CLASS", "bags_entry", "sf3_entry"]
