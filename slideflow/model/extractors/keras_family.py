"""Keras models as feature extractors (TensorFlow backend; imported only when one is built).

Three ways in, all through `build_feature_extractor`:

- a `keras.Model` object: ``build_feature_extractor(model, layers=..., pooling='avg')``;
- a saved model file (``.keras``, or a legacy ``.h5`` model): loaded with Keras' safe mode, so
  a file can never run code (Lambda layers are refused);
- a Keras ImageNet application by our registry spelling with ``backend='tensorflow'``
  (``build_feature_extractor('resnet50_imagenet', backend='tensorflow', tile_px=299)``), as
  Slideflow 3's TensorFlow ImageNet extractor: built without top, run at the tile size, global
  average pooled ("postconv"), weights read from ``weights=`` or the Keras cache
  (``$KERAS_HOME/models/<the file Keras names>``), never downloaded.

The extractor speaks the engine's contract (``device``, ``batch_size``, ``num_features``,
``preprocess``, ``forward_preprocessed``, ``embed``, ``dump_config``); tiles cross from torch
to TensorFlow as host memory. ``dump_config`` names the model file or the application, never
code, and `rebuild_extractor` rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ExtractorNotFound, WeightsError
from ...tf_runtime import import_tensorflow

#: class name written to bags_config.json for Keras extractors
KERAS_EXTRACTOR_CLASS = "slideflow.model.KerasFeatureExtractor"

#: registry spelling -> (keras.applications constructor, preprocessing module, notop weights file
#: in the Keras cache). File names as keras.applications requests them.
KERAS_APPLICATIONS: dict[str, tuple[str, str, str]] = {
    "resnet50_imagenet": ("ResNet50", "resnet50",
                          "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet101_imagenet": ("ResNet101", "resnet",
                           "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet152_imagenet": ("ResNet152", "resnet",
                           "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50_v2_imagenet": ("ResNet50V2", "resnet_v2",
                             "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception_imagenet": ("Xception", "xception",
                          "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "inception_v3_imagenet": ("InceptionV3", "inception_v3",
                              "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "densenet121_imagenet": ("DenseNet121", "densenet",
                             "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg16_imagenet": ("VGG16", "vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2_imagenet": ("MobileNetV2", "mobilenet_v2",
                              "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
}
#: Slideflow 3 `model_name`s of its TensorFlow ImageNet extractor -> our spelling
SF3_KERAS_NAMES = {
    "resnet50": "resnet50_imagenet", "resnet101": "resnet101_imagenet",
    "resnet152": "resnet152_imagenet", "resnet50_v2": "resnet50_v2_imagenet",
    "xception": "xception_imagenet", "inception_v3": "inception_v3_imagenet",
    "densenet121": "densenet121_imagenet", "densenet": "densenet121_imagenet",
    "vgg16": "vgg16_imagenet", "mobilenet_v2": "mobilenet_v2_imagenet",
}
#: `preprocess=` choices for user models: keras.applications' modes, plus 'scale' (x / 255)
PREPROCESS_MODES = (None, "caffe", "tf", "torch", "scale")
_MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_keras_request(name: Any, backend: str | None) -> bool:
    """Whether `build_feature_extractor` should build a Keras extractor for these arguments."""
    if backend in ("tensorflow", "tf", "keras"):
        return True
    if isinstance(name, (str, os.PathLike)):
        return str(name).lower().endswith(_MODEL_SUFFIXES)
    return type(name).__module__.startswith(("keras", "tf_keras", "tensorflow"))


def keras_layer_names(name: str) -> set[str]:
    """Layer names of the Keras application `name` (architecture only, no weights)."""
    import_tensorflow()
    import keras

    model = getattr(keras.applications, KERAS_APPLICATIONS[name][0])(
        include_top=False, weights=None, input_shape=(None, None, 3), pooling="avg")
    return {layer.name for layer in model.layers}


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded application weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pool(tensor: Any, pooling: str | None) -> Any:
    tf = import_tensorflow()

    if tensor.shape.rank == 4:
        if pooling == "avg":
            return tf.reduce_mean(tensor, axis=(1, 2))
        if pooling == "max":
            return tf.reduce_max(tensor, axis=(1, 2))
    if tensor.shape.rank == 3:
        if pooling == "avg":
            return tf.reduce_mean(tensor, axis=1)
        if pooling == "max":
            return tf.reduce_max(tensor, axis=1)
    return tf.reshape(tensor, (tf.shape(tensor)[0], -1))


class KerasFeatureExtractor:
    """A Keras model (or chosen layers of it) as a tile feature extractor."""

    backend = "tensorflow"
    precision = "fp32"
    channels_last = True

    def __init__(self, model: Any, *, name: str, layers: Sequence[str] | None,
                 pooling: str | None, preprocess: str | None, input_px: int | None,
                 tile_px: int, batch_size: int, config_kwargs: dict[str, Any],
                 weights_source: str, weights_sha256: str | None, pretrained: bool,
                 license: str | None = None, citation: str | None = None):
        import torch

        tf = import_tensorflow()

        if pooling not in ("avg", "max", None):
            raise ValueError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, not {preprocess!r}")
        self.name = name
        self.model = model
        self.layers = list(layers) if layers else None
        self.pooling = pooling
        self.preprocess_mode = preprocess
        self.input_px = input_px
        self.batch_size = int(batch_size)
        self.device = torch.device("cpu")  # tiles reach TensorFlow through host memory
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256
        self.pretrained = pretrained
        self.license = license
        self.citation = citation
        self._config_kwargs = dict(config_kwargs)
        outputs = model.outputs if not self.layers else [self._layer(n).output
                                                         for n in self.layers]
        self._features = tf.keras.Model(model.inputs, outputs) if self.layers else model
        self.num_features = 0  # set by the probe below
        self._run = tf.function(self._forward, reduce_retracing=True)
        probe = np.zeros((1, tile_px, tile_px, 3), np.uint8)
        self.num_features = int(self.embed(probe).shape[1])

    def _layer(self, name: str) -> Any:
        try:
            return self.model.get_layer(name)
        except ValueError:
            names = [layer.name for layer in self.model.layers]
            raise ValueError(f"{self.name}: unknown layer {name!r}; available: "
                             f"{names[:60]}") from None

    def __repr__(self) -> str:
        weights = self.weights_source if self.pretrained else "RANDOM INIT (pretrained=False)"
        return (f"<KerasFeatureExtractor {self.name}: {self.num_features}-d, "
                f"weights {weights}>")

    # ------------------------------------------------------------------ compute
    def _prepare(self, x: Any) -> Any:
        tf = import_tensorflow()

        x = tf.cast(x, tf.float32)
        if self.input_px and (x.shape[1] != self.input_px or x.shape[2] != self.input_px):
            x = tf.image.resize(x, (self.input_px, self.input_px), method="bilinear",
                                antialias=True)
        mode = self.preprocess_mode
        if mode == "scale":
            return x / 255.0
        if mode is not None:
            from keras.applications import imagenet_utils

            return imagenet_utils.preprocess_input(x, mode=mode)
        return x

    def _forward(self, x: Any) -> Any:
        tf = import_tensorflow()

        out = self._features(self._prepare(x), training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        if not self.layers and len(outs) == 1 and outs[0].shape.rank == 2:
            return tf.cast(outs[0], tf.float32)
        return tf.concat([tf.cast(_pool(o, self.pooling), tf.float32) for o in outs], axis=1)

    def embed(self, batch: Any, batch_size: int | None = None) -> np.ndarray:
        """float32 (N, D) features of uint8 NHWC tiles (numpy, torch or TensorFlow)."""
        x = _as_nhwc_uint8(batch)
        n = len(x)
        step = int(batch_size or self.batch_size)
        parts = [self._run(x[i:i + step]).numpy() for i in range(0, n, step)]
        if not parts:
            return np.zeros((0, getattr(self, "num_features", 0)), np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def preprocess(self, x: Any) -> Any:
        """The engine's preprocessing stage: identity (TensorFlow preprocesses in `_forward`)."""
        return x

    def forward_preprocessed(self, x: Any) -> Any:
        """Engine stage: uint8 NCHW torch tiles -> float32 (N, D) torch features."""
        import torch

        feats = self.embed(x.permute(0, 2, 3, 1).cpu().numpy())
        return torch.from_numpy(feats)

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        from .base import FeatureExtractor

        if _is_tf_tensor(x):
            return self.embed(x, **kwargs)
        return FeatureExtractor.__call__(self, x, **kwargs)  # arrays, WSIs, TFRecords

    # ------------------------------------------------------------------ config
    def dump_config(self) -> dict[str, Any]:
        """``{"class", "kwargs"}`` naming the model file or application (never code)."""
        if self._config_kwargs.get("model") is None and "name" not in self._config_kwargs:
            raise WeightsError(
                f"{self.name}: an in-memory keras.Model cannot be recorded in a config; save "
                "it (model.save('extractor.keras')) and build the extractor from that path")
        return {"class": KERAS_EXTRACTOR_CLASS, "kwargs": dict(self._config_kwargs)}

    def state_dict(self) -> dict[str, Any]:
        raise TypeError(f"{self.name} is a Keras model: save it with model.save('x.keras')")


def _is_tf_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("tensorflow")


def _as_nhwc_uint8(batch: Any) -> np.ndarray:
    if _is_tf_tensor(batch):
        batch = batch.numpy()
    elif type(batch).__module__.startswith("torch"):
        batch = batch.cpu().numpy()
    arr = np.asarray(batch)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 tiles, got {arr.dtype}; convert float images with "
                        "(x * 255).round().astype(np.uint8)")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) tiles, got {arr.shape}")
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- builders


def _load_model_file(path: Path) -> Any:
    import_tensorflow()
    import keras

    if not path.is_file():
        raise FileNotFoundError(f"no Keras model file at {path}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # keras raises ValueError/TypeError for unsafe or custom layers
        raise WeightsError(f"{path}: cannot load this Keras model safely ({e}); models with "
                           "Lambda layers or unregistered custom layers are refused") from None


def _application(name: str, weights: str | os.PathLike | None, pretrained: bool, seed: int
                 ) -> tuple[Any, str, str | None, Path | None]:
    import_tensorflow()
    import keras

    ctor, module, filename = KERAS_APPLICATIONS[name]
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, ctor)(include_top=False, weights=None,
                                              input_shape=(None, None, 3), pooling="avg")
    if not pretrained:
        return model, "random init (pretrained=False)", None, None
    path = Path(os.path.expanduser(os.fspath(weights))) if weights is not None else \
        keras_cache_dir() / filename
    if not path.is_file():
        raise WeightsError(
            f"{name} (Keras): no weights at {path}; put Keras' ImageNet file {filename} "
            f"there (keras_cache_dir() = {keras_cache_dir()}, set KERAS_HOME to move it), pass "
            "weights='/path/to/file.h5', or pretrained=False for random weights (nothing is "
            "downloaded)")
    try:
        model.load_weights(path)
    except Exception as e:
        raise WeightsError(f"{path}: not {name} ImageNet weights without top ({e})") from None
    return model, str(path), _sha256(path), path


def build_keras_extractor(name: Any, *, weights: str | os.PathLike | None = None,
                          backend: str | None = None, batch_size: int = 64,
                          layers: str | Sequence[str] | None = None, pooling: str | None = "avg",
                          preprocess: str | None = None, tile_px: int | None = None,
                          pretrained: bool = True, seed: int = 0, **unknown: Any
                          ) -> KerasFeatureExtractor:
    """Build a `KerasFeatureExtractor` (see the module docstring for the three inputs)."""
    if unknown:
        raise TypeError(f"unknown argument(s) for a Keras extractor: {sorted(unknown)}")
    if isinstance(layers, str):
        layers = [layers]
    if layers is not None and list(layers) == ["postconv"]:
        layers = None  # Slideflow's name for the pooled output of the base model
    config: dict[str, Any] = {}
    sha = None
    if isinstance(name, str) and name in KERAS_APPLICATIONS:
        if weights is not None and not pretrained:
            raise ValueError("pass either weights= or pretrained=False, not both")
        model, source, sha, path = _application(name, weights, pretrained, seed)
        preprocess = preprocess or "app"
        label = name
        config.update(name=name, backend="tensorflow")
        if path is not None and weights is not None:
            config["weights"] = str(path.resolve())
        if not pretrained:
            config.update(pretrained=False, seed=seed)
        input_px = None
    elif isinstance(name, (str, os.PathLike)):
        if not str(name).lower().endswith(_MODEL_SUFFIXES):
            known = ", ".join(sorted(KERAS_APPLICATIONS))
            raise ExtractorNotFound(
                f"{name!r} has no TensorFlow/Keras build (backend='tensorflow'): Keras ImageNet "
                f"applications here are {known}, or pass a keras.Model / saved .keras file; "
                "drop backend= (or backend='torch') for the PyTorch extractor")
        path = Path(os.path.expanduser(os.fspath(name))).resolve()
        model = _load_model_file(path)
        source, sha, label = str(path), _sha256(path), path.stem
        config["model"] = str(path)
        input_px = _fixed_input_px(model)
    else:
        model, source, label = name, "in-memory keras.Model", getattr(name, "name", "keras")
        config["model"] = None
        input_px = _fixed_input_px(model)
    mode = None
    if preprocess == "app":
        mode = _app_mode(name)
    elif preprocess is not None:
        mode = preprocess
        config["preprocess"] = preprocess
    if layers:
        config.update(layers=list(layers), pooling=pooling)
    if tile_px is not None:
        config["tile_px"] = int(tile_px)
    return KerasFeatureExtractor(
        model, name=label, layers=layers, pooling=pooling, preprocess=mode, input_px=input_px,
        tile_px=int(tile_px or input_px or 224), batch_size=batch_size, config_kwargs=config,
        weights_source=source, weights_sha256=sha,
        pretrained=pretrained and source != "random init (pretrained=False)",
        license="Keras Applications: Apache-2.0 code; ImageNet weights per Keras' terms"
        if isinstance(name, str) and name in KERAS_APPLICATIONS else None)


def _app_mode(name: str) -> str:
    """keras.applications' own preprocessing mode of an application."""
    module = KERAS_APPLICATIONS[name][1]
    return {"resnet50": "caffe", "resnet": "caffe", "vgg16": "caffe", "densenet": "torch",
            "resnet_v2": "tf", "xception": "tf", "inception_v3": "tf",
            "mobilenet_v2": "tf"}[module]


def _fixed_input_px(model: Any) -> int | None:
    """The square input size a model insists on, or None when it takes any size."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
        return int(shape[1])
    return None
