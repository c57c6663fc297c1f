"""Slideflow 3 spellings of extractor construction, translated to this registry.

Slideflow 3 code ported here keeps working, or fails with a message naming the equivalent:

- ``build_feature_extractor(name, backend='torch')``: accepted; ``backend='tensorflow'`` builds
  a Keras extractor before this module is reached (see `keras_family`).
- ``'<name>.tile'`` is the tile encoder ``'<name>'`` (Slideflow's ``'gigapath.tile'``), unless a
  name with the suffix is registered itself; see `registry.get_spec`.
- ``('dinov2', weights=..., cfg='config.yaml')``: ``cfg`` is our ``config``.
- ``('simclr', ckpt=...)``: Slideflow's simclr loads a TensorFlow SimCLRv2 checkpoint, which is
  refused by name; a PyTorch file is taken as ``weights=`` of our ResNet ``simclr``.
- ``layers='postconv'`` (Slideflow's pooled post-convolution output) is our default feature.
- `register_torch`: a user's factory returning a Slideflow-style extractor object (``.model``,
  ``.transform``, ``.num_features``) is registered and built by name, then run by our engine.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import ExtractorNotFound, WeightsError
from .registry import (
    EXTRACTORS,
    get_spec,
    normalize,
    register_extractor,
    unregister_extractor,
)
from .spec import ExtractorSpec

_TORCH_BACKENDS = (None, "torch", "pytorch")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")

# registry key -> factory registered with @register_torch
_factories: dict[str, Callable[..., Any]] = {}


def translate(name: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, kwargs) for our `build_feature_extractor` from a Slideflow 3 call."""
    kwargs = dict(kwargs)
    backend = kwargs.pop("backend", None)
    if isinstance(backend, str):
        backend = backend.lower()
    if backend not in _TORCH_BACKENDS:
        raise ValueError(f"backend must be 'torch' (or None), not {backend!r}")
    if is_sf3_factory(name):
        return name, kwargs
    spec = get_spec(name)
    if "cfg" in kwargs:
        if spec.family != "dinov2":
            raise TypeError(f"{spec.name}: unknown option 'cfg' (only dinov2 takes a training "
                            "config; its spelling here is config=)")
        if "config" in kwargs:
            raise TypeError("pass cfg= or config=, not both")
        kwargs["config"] = kwargs.pop("cfg")
    if "ckpt" in kwargs:
        kwargs = _ckpt(spec.name, kwargs)
    layers = kwargs.get("layers")
    if layers == "postconv" or layers == ["postconv"]:
        kwargs.pop("layers")  # Slideflow's pooled post-convolution output: our default
    if kwargs.get("include_preds"):
        raise ExtractorNotFound(f"{spec.name}: include_preds=True (ImageNet logits as "
                                "features) is not supported; features are the pooled "
                                "activations (layers= for intermediate blocks)")
    kwargs.pop("include_preds", None)
    return name, kwargs


def _ckpt(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    ckpt = kwargs.pop("ckpt")
    if "weights" in kwargs and kwargs["weights"] is not None:
        raise TypeError(f"{name}: pass ckpt= or weights=, not both")
    if name == "simclr" and is_tf_checkpoint(ckpt):
        raise WeightsError(
            f"{ckpt}: this is a TensorFlow SimCLR checkpoint (Slideflow 3's simclr, "
            "SimCLR_Features). TensorFlow models are not supported. slideflow's 'simclr' is the "
            "ResNet encoder of a PyTorch SimCLR checkpoint: build_feature_extractor('simclr', "
            "weights='encoder.pth', arch='resnet50'), with inputs scaled to [0, 1].")
    kwargs["weights"] = ckpt
    return kwargs


def check_not_trained_folder(name: Any) -> None:
    """Refuse a model folder trained in Slideflow 3 (``params.json`` beside the saved model)
    by name: Slideflow 3's training code and saved-model layout are not part of slideflow."""
    if not isinstance(name, (str, os.PathLike)):
        return
    path = Path(os.fspath(name)).expanduser()
    if path.is_dir() and (path / "params.json").is_file():
        raise ExtractorNotFound(
            f"{path}: a model trained in Slideflow 3 (params.json) cannot be loaded here. "
            "Export its network (Keras: model.save('model.keras'); PyTorch: a state_dict for "
            "a registry architecture) and build it with build_feature_extractor("
            "'model.keras', backend='tensorflow', layers=[...]) or (name, weights=...)")


def is_tf_checkpoint(path: Any) -> bool:
    """A TensorFlow checkpoint or SavedModel (file prefix, folder or .index/.pb file)."""
    p = Path(os.fspath(path)).expanduser()
    if p.suffix.lower() in _TORCH_SUFFIXES and p.is_file():
        return False
    if p.is_dir():
        names = {c.name for c in p.iterdir()}
        return bool({"saved_model.pb", "checkpoint", "args.json"} & names) or any(
            n.endswith(".index") for n in names)
    return (p.suffix in (".index", ".pb") or Path(str(p) + ".index").exists()
            or p.name.startswith("ckpt-"))


# ---------------------------------------------------------------------------- register_torch
def register_torch(key_name: str | Callable[..., Any] | None = None):
    """Slideflow 3's decorator: register a factory returning an extractor object by name.

    ``@register_torch`` uses the function's name; ``@register_torch('name')`` another one.
    The object the factory returns needs ``.model`` (an ``nn.Module``), ``.num_features`` and
    ``.transform`` (uint8 NCHW tensor -> normalised float tensor); ``.device``, ``.license``,
    ``.citation`` and ``.tag`` are used when present. `build_feature_extractor(name, **kw)` calls
    the factory with ``kw`` and runs the object through slideflow's engine.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = key_name if isinstance(key_name, str) else fn.__name__
        _register_factory(name, fn)
        return fn

    if callable(key_name):
        return decorator(key_name)
    return decorator


def _register_factory(name: str, fn: Callable[..., Any]) -> None:
    key = normalize(name)
    with EXTRACTORS.locked():  # the check and the registration are one step
        if EXTRACTORS.is_plugin(key) and key not in _factories:
            raise ValueError(f"extractor {name!r} is already registered")
        spec = ExtractorSpec(name=name, family="slideflow3", dim=None, input_px=224,
                             license="see the extractor's author",
                             builder=f"{__name__}:_not_a_builder",
                             description=f"registered with @register_torch ({fn.__module__}."
                                         f"{fn.__qualname__})")
        register_extractor(spec, replace=True)
        _factories[key] = fn


def _not_a_builder(*_args: Any, **_kwargs: Any) -> None:  # pragma: no cover - routed earlier
    raise RuntimeError("@register_torch extractors are built by their factory")


def is_sf3_factory(name: Any) -> bool:
    return isinstance(name, str) and normalize(name) in _factories


def unregister_torch(name: str) -> None:
    _factories.pop(normalize(name), None)
    unregister_extractor(name)


def build_from_factory(name: str, *, batch_size: int = 64, mixed_precision: Any = None,
                       channels_last: bool | None = None, **kwargs: Any):
    """Call a @register_torch factory and wrap its object as a `FeatureExtractor`."""
    obj = _factories[normalize(name)](**kwargs)
    return as_feature_extractor(obj, name=name, config={"name": name, **kwargs},
                                batch_size=batch_size, mixed_precision=mixed_precision,
                                channels_last=channels_last)


def as_feature_extractor(obj: Any, *, name: str | None = None,
                         config: dict[str, Any] | None = None, batch_size: int = 64,
                         mixed_precision: Any = None, channels_last: bool | None = None):
    """A Slideflow-style extractor object (``.model``, ``.transform``, ``.num_features``) as
    our `FeatureExtractor` (engine, bags, DatasetFeatures). Already ours: returned as is."""
    import torch

    from .base import FeatureExtractor
    from .preprocess import Preprocess

    if isinstance(obj, FeatureExtractor):
        return obj
    name = name or str(getattr(obj, "tag", None) or type(obj).__name__)
    model = getattr(obj, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name}: {type(obj).__name__} has no torch .model; a Slideflow-style "
                        "extractor needs .model, .transform and .num_features")
    num = getattr(obj, "num_features", None)
    if not isinstance(num, int) or num <= 0:
        raise TypeError(f"{name}: the extractor object needs a positive integer .num_features")
    device = torch.device(getattr(obj, "device", None) or next(
        (p.device for p in model.parameters()), torch.device("cpu")))
    transform = getattr(obj, "transform", None)
    pre = transform if isinstance(transform, Preprocess) else ForeignTransform(
        transform or _default_transform)
    spec = ExtractorSpec(name=name, family="slideflow3", dim=num, input_px=pre.input_px,
                         license=str(getattr(obj, "license", None) or getattr(
                             obj, "license_statement", None) or "see the extractor's author"),
                         citation=str(getattr(obj, "citation", "") or "").strip())
    model.eval()
    if config is None:  # not registered: rebuild_extractor cannot rebuild it by name
        config = {"name": name}
    return FeatureExtractor(
        spec, model, pre, num_features=num, device=device, batch_size=batch_size,
        mixed_precision=mixed_precision if mixed_precision is not None else None,
        channels_last=bool(channels_last if channels_last is not None else getattr(
            obj, "channels_last", False)),
        weights_source="loaded by the extractor's own code", weights_sha256=None,
        weights_files=None, pretrained=True, config_kwargs=config)


def _default_transform(x):
    """Slideflow's default: /255 then ImageNet mean/std."""
    import torch

    mean = torch.tensor((0.485, 0.456, 0.406), device=x.device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


class ForeignTransform:
    """A Slideflow-style transform (uint8 NCHW -> float NCHW) in the `Preprocess` role."""

    input_px = 224

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x).float()

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        import torch

        return tuple(self(torch.zeros(1, 3, h, w, dtype=torch.uint8)).shape[-2:])

    def describe(self) -> str:
        return f"user transform {self.fn!r}"

    __str__ = describe


def wraps_build(build: Callable[..., Any]) -> Callable[..., Any]:
    """`build` with Slideflow 3's spellings translated first (same signature and docs)."""

    @functools.wraps(build)
    def build_feature_extractor(name: str, *args: Any, **kwargs: Any):
        if args:  # positional weights / device...: bind to names, then translate
            bound = inspect.signature(build).bind_partial(name, *args)
            kwargs = {**{k: v for k, v in bound.arguments.items() if k != "name"}, **kwargs}
        name, kwargs = translate(name, kwargs)
        if is_sf3_factory(name):
            return build_from_factory(name, **kwargs)
        return build(name, **kwargs)

    return build_feature_extractor
