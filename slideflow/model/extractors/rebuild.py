"""Rebuild the extractor (and stain normaliser) that made a folder of feature bags.

Only registered extractors can be rebuilt: the ``class`` in a config selects a registered
spec (ours, or a Slideflow 3 class path that a spec declares as its `sf3_class`, see
`registry.sf3_classes`) or one of the Slideflow 3 generic classes below, and nothing is ever
imported from a class path written in a file. Anything else raises `UnsafeConfigError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ...errors import ExtractorNotFound, UnsafeConfigError, WeightsError
from ...io.bags_config import own_extractor, read_bags_config
from ...norm import from_config
from .factory import build_feature_extractor
from .keras_family import KERAS_APPLICATIONS, KERAS_EXTRACTOR_CLASS, SF3_KERAS_NAMES
from .registry import get_spec, sf3_classes
from .spec import EXTRACTOR_CLASS, SF3_MODULE

log = logging.getLogger(__name__)

_SF3_TRANSFORM_KEYS = ("center_crop", "resize", "interpolation", "antialias", "norm_mean",
                       "norm_std")
# Slideflow 3 TorchFeatureExtractor.get_transforms defaults: crop then resize, only when asked,
# bilinear without antialiasing, ImageNet mean/std
_SF3_DEFAULTS = {"resize": False, "center_crop": False, "order": "crop_resize",
                 "interpolation": "bilinear", "antialias": False,
                 "norm_mean": (0.485, 0.456, 0.406), "norm_std": (0.229, 0.224, 0.225)}

SF3_IMAGENET = SF3_MODULE + "TorchImagenetLayerExtractor"
SF3_IMAGENET_NAMES = {"resnet18": "resnet18_imagenet", "resnet34": "resnet34_imagenet",
                      "resnet50": "resnet50_imagenet", "densenet": "densenet121_imagenet",
                      "densenet121": "densenet121_imagenet"}
SF3_KERAS_IMAGENET = SF3_MODULE + "TensorflowImagenetLayerExtractor"
SF3_VIT = SF3_MODULE + "vit.ViTFeatures"
SF3_VIRCHOW = SF3_MODULE + "virchow.VirchowFeatures"
SF3_GIGAPATH_TILE = SF3_MODULE + "gigapath.GigapathTileFeatures"
SF3_DINOV2 = SF3_MODULE + "dinov2.DinoV2Features"
SF3_UNSUPPORTED = {
    SF3_MODULE + "simclr.SimCLR_Features": "a TensorFlow SimCLR model (Slideflow 3's simclr); "
                                     "TensorFlow models are not supported",
    SF3_MODULE + "gigapath.GigapathFeatures": "a slide-level Prov-GigaPath encoder; only the tile "
                                        "encoder ('gigapath') is supported",
}


def load_config(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The bags config: a bag folder, a ``bags_config.json`` path or a dict (a missing or
    malformed file raises `BagError` naming it)."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict)
    return read_bags_config(path_or_dict)


def extractor_arguments(ext_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``build_feature_extractor`` keyword arguments for an extractor config, or an error."""
    if not isinstance(ext_cfg, Mapping):
        raise UnsafeConfigError(f"extractor config must be an object, got {ext_cfg!r}")
    cls = ext_cfg.get("class")
    kwargs = ext_cfg.get("kwargs") or {}
    if not isinstance(cls, str) or not isinstance(kwargs, Mapping):
        raise UnsafeConfigError(f"extractor config needs a 'class' string and a 'kwargs' "
                                f"object, got {dict(ext_cfg)!r}")
    if cls == EXTRACTOR_CLASS:
        if not isinstance(kwargs.get("name"), str):
            raise UnsafeConfigError(f"{cls} config without a registry 'name': {dict(kwargs)!r}")
        get_spec(kwargs["name"])  # ExtractorNotFound (with install hint) if unknown
        return dict(kwargs)
    if cls == KERAS_EXTRACTOR_CLASS:
        return _keras_arguments(kwargs)
    if cls == SF3_KERAS_IMAGENET:
        return _sf3_keras(kwargs)
    if cls in SF3_UNSUPPORTED:
        raise ExtractorNotFound(f"the bags were made with {cls}, {SF3_UNSUPPORTED[cls]}")
    sf3_names = sf3_classes()
    if cls in sf3_names:
        spec = get_spec(sf3_names[cls])  # ExtractorNotFound (with install hint) if absent
        out = _sf3_transforms(kwargs, spec.input_px, spec.sf3_transforms)
        for key, (ours, default) in spec.sf3_kwargs.items():  # e.g. H0-mini pool -> output
            out[ours] = kwargs.get(key, default)
        weights = kwargs.get("weights", kwargs.get("ckpt"))
        if weights is not None:
            out["weights"] = weights
        return {"name": spec.name, **out}
    if cls == SF3_IMAGENET:
        return _sf3_imagenet(kwargs)
    if cls == SF3_VIT:
        out = {"name": "vit", "size": kwargs.get("size", "small"), "resize": False,
               "center_crop": 224 if kwargs.get("center_crop") else False,
               "order": "crop_resize", "antialias": True}
        if kwargs.get("resize"):
            out["resize"] = 224
        if kwargs.get("weights"):
            out["weights"] = kwargs["weights"]
        return out
    if cls == SF3_DINOV2:
        out = {"name": "dinov2", "resize": False,
               "center_crop": 224 if kwargs.get("center_crop") else False}
        if ext_cfg.get("cfg"):
            out["config"] = ext_cfg["cfg"]
        if ext_cfg.get("weights"):
            out["weights"] = ext_cfg["weights"]
        return out
    raise UnsafeConfigError(
        f"refusing to rebuild extractor class {cls!r}: it is not a registered slideflow "
        "extractor (configs can only name registered extractors; no code is imported from "
        "them)")


def _sf3_transforms(kwargs: Mapping[str, Any], img_size: int, defaults: Mapping[str, Any]
                    ) -> dict[str, Any]:
    merged = {**_SF3_DEFAULTS, **defaults}
    for key in _SF3_TRANSFORM_KEYS:
        if key in kwargs:
            merged[key] = kwargs[key]
    for key in ("resize", "center_crop"):
        if merged.get(key) is True:
            merged[key] = img_size
    if merged.get("resize") and merged.get("order") == "crop_resize" and not merged.get(
            "center_crop"):
        merged["order"] = "resize_crop"
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in merged.items()
           if v is not None}
    return out


def _keras_arguments(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A Keras extractor config names a model file or a Keras application, never code."""
    out = dict(kwargs)
    if "model" in out:
        model = out.pop("model")
        if not isinstance(model, str):
            raise UnsafeConfigError("the bags were made with an in-memory keras.Model that was "
                                    "never saved; rebuild it with build_feature_extractor("
                                    "'/path/to/saved.keras', ...)")
        return {"name": model, **out}
    if out.get("name") not in KERAS_APPLICATIONS:
        raise UnsafeConfigError(f"Keras extractor config names neither a model file nor a "
                                f"Keras application: {dict(kwargs)!r}")
    out["backend"] = "tensorflow"
    return out


def _sf3_model(kwargs: Mapping[str, Any], table: Mapping[str, str], what: str) -> str:
    """Our name for a Slideflow 3 ImageNet extractor's `model_name` (or an error)."""
    model = str(kwargs.get("model_name"))
    name = table.get(model)
    if name is None:
        raise ExtractorNotFound(f"Slideflow 3 {what} model {model!r} has no counterpart here; "
                                f"available: {sorted(table)}")
    if kwargs.get("include_preds"):
        raise ExtractorNotFound("Slideflow 3 include_preds=True (ImageNet logits) is not "
                                "supported")
    return name


def _sf3_layers(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``layers``/``pooling`` of a Slideflow 3 ImageNet config ('postconv' = our default)."""
    layers = kwargs.get("layers")
    if isinstance(layers, str):
        layers = [layers]
    if not layers or list(layers) == ["postconv"]:
        return {}
    if "postconv" in layers:
        raise ExtractorNotFound("Slideflow 3 layers mixing 'postconv' with named layers are "
                                "not supported")
    return {"layers": list(layers), "pooling": kwargs.get("pooling", "avg")}


def _sf3_keras(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Slideflow 3's TensorFlow ImageNet extractor -> our Keras application extractor."""
    name = _sf3_model(kwargs, SF3_KERAS_NAMES, "TensorFlow ImageNet")
    return {"name": name, "backend": "tensorflow", "tile_px": int(kwargs.get("tile_px") or 224),
            **_sf3_layers(kwargs)}


def _sf3_imagenet(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    name = _sf3_model(kwargs, SF3_IMAGENET_NAMES, "ImageNet")
    tile_px = int(kwargs.get("tile_px") or 224)
    return {"name": name, "tile_px": tile_px, **_sf3_transforms(kwargs, tile_px, {}),
            **_sf3_layers(kwargs)}


def rebuild_extractor(path_or_dict: str | os.PathLike | Mapping[str, Any], *,
                      verify_weights: bool = True, **overrides: Any):
    """``(extractor, normalizer)`` for a bag folder, its ``bags_config.json``, or a dict.

    `overrides` (e.g. ``device=``, ``batch_size=``, ``weights=`` when the checkpoint moved)
    are passed to `build_feature_extractor`. With `verify_weights`, the weights' sha256 must
    equal the one recorded in the config's provenance, when recorded.
    """
    cfg = load_config(path_or_dict)
    if "extractor" in cfg:
        ext_cfg, norm_cfg = own_extractor(cfg["extractor"]), cfg.get("normalizer")
    elif "class" in cfg:
        ext_cfg, norm_cfg = cfg, None
    else:
        raise UnsafeConfigError("config has neither 'extractor' nor 'class'")
    kwargs = extractor_arguments(_sf3_gigapath_as_virchow(ext_cfg, cfg.get("num_features")))
    kwargs.update(overrides)
    name = kwargs.pop("name")
    for key in ("norm_mean", "norm_std"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    extractor = build_feature_extractor(name, **kwargs)

    recorded = (cfg.get("provenance") or {}).get("weights_sha256")
    if verify_weights and recorded and extractor.weights_sha256 and \
            recorded != extractor.weights_sha256:
        raise WeightsError(f"{extractor.name}: weights sha256 {extractor.weights_sha256} "
                           f"differs from the {recorded} recorded with the bags; these are not "
                           "the weights that made them (pass verify_weights=False to accept)")
    num = cfg.get("num_features")
    if num is not None and int(num) != extractor.num_features:
        raise WeightsError(f"{extractor.name} gives {extractor.num_features} features but the "
                           f"bags have {num}")
    return extractor, _normalizer(norm_cfg)


def _sf3_gigapath_as_virchow(ext_cfg: Any, num_features: Any) -> Any:
    """Slideflow 3's tile ``GigapathFeatures`` (before ``GigapathTileFeatures``) wrote
    ``virchow.VirchowFeatures`` with only its weights into bags_config.json; its 1536 features
    (Virchow gives 2560) tell such bags apart. They rebuild as the GigaPath tile encoder with
    that class's preprocessing (Resize(256, bicubic) + CenterCrop(224), ImageNet)."""
    if not isinstance(ext_cfg, Mapping) or ext_cfg.get("class") != SF3_VIRCHOW:
        return ext_cfg
    try:
        gigapath = num_features is not None and int(num_features) == 1536
    except (TypeError, ValueError):
        return ext_cfg
    if not gigapath:
        return ext_cfg
    kwargs = ext_cfg.get("kwargs") or {}
    log.warning("bags_config.json names Slideflow 3's VirchowFeatures but holds 1536 features: "
                "written by Slideflow 3's GigapathFeatures (which recorded the wrong class); "
                "rebuilding the GigaPath tile encoder")
    weights = kwargs.get("weights") if isinstance(kwargs, Mapping) else None
    return {"class": SF3_GIGAPATH_TILE, "kwargs": {"weights": weights}}


def _normalizer(norm_cfg: Any):
    return from_config(norm_cfg) if norm_cfg else None
