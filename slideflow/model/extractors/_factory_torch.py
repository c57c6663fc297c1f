"""Slideflow 3's ``TorchFeatureExtractor`` base class, for custom extractors ported as they are.

Slideflow 3's guide ("Custom Feature Extractors") subclasses
``slideflow.model.extractors._factory_torch.TorchFeatureExtractor``, sets ``.model``,
``.num_features`` and ``.transform`` in ``__init__`` and registers a factory with
``@register_torch``. The same class body works here: `build_transform` returns our batched
`Preprocess` with Slideflow's defaults (centre crop before resize, bilinear without antialias,
ImageNet mean/std), and calling the object on tiles, a WSI or a TFRecord runs slideflow's
engine.
"""

from __future__ import annotations

from typing import Any

from .preprocess import Preprocess
from .sf3 import as_feature_extractor
from .spec import IMAGENET_MEAN, IMAGENET_STD


class TorchFeatureExtractor:
    """Base class with Slideflow 3's attributes; subclasses set model/num_features/transform."""

    tag = "custom"
    license = "see the extractor's author"
    citation = ""
    backend = "torch"

    def __init__(self, channels_last: bool = False, mixed_precision: bool = True,
                 **transform_kwargs: Any) -> None:
        import torch

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.channels_last = channels_last
        self.mixed_precision = mixed_precision
        unknown = set(transform_kwargs) - {"center_crop", "resize", "interpolation",
                                           "antialias", "norm_mean", "norm_std"}
        if unknown:
            raise ValueError(f"Unrecognized argument(s): {sorted(unknown)}")
        self.transform_kwargs = transform_kwargs
        self.model: Any = None
        self.num_features: int = 0
        self.transform: Any = None
        self.preprocess_kwargs = {"standardize": False}
        self._engine: Any = None

    def build_transform(self, *, img_size: int | None = None, **kwargs: Any) -> Preprocess:
        """Slideflow's get_transforms as one `Preprocess`: crop, then resize, then normalise."""
        kw = {**kwargs, **self.transform_kwargs}
        crop, resize = kw.get("center_crop"), kw.get("resize")
        crop = img_size if crop is True else crop
        resize = img_size if resize is True else resize
        size = int(resize or crop or img_size or 224)
        return Preprocess(
            input_px=size, mean=tuple(kw.get("norm_mean") or IMAGENET_MEAN),
            std=tuple(kw.get("norm_std") or IMAGENET_STD),
            resize_px=int(resize) if resize else None, resize=bool(resize),
            center_crop=int(crop) if crop else None, order="crop_resize",
            interpolation=kw.get("interpolation", "bilinear"),
            antialias=bool(kw.get("antialias", False)))

    def dump_config(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "kwargs": dict(self.transform_kwargs)}

    def __call__(self, obj: Any, **kwargs: Any) -> Any:
        """Features of uint8 tiles, a WSI or a .tfrecords path (slideflow's engine)."""
        if self._engine is None:
            self._engine = as_feature_extractor(self)
        return self._engine(obj, **kwargs)
