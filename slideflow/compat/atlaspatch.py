"""AtlasPatch's extractor names on slideflow's registry, and its `process` options mapped.

`build_extractor('uni_v1')` builds slideflow's `uni` and names it `uni_v1`, so an AtlasPatch
file (`<output>/patches/<stem>.h5`, `slideflow.io.atlaspatch`) stores it under AtlasPatch's
dataset name `features/uni_v1`, where AtlasPatch's reader looks. A name that is not an
AtlasPatch alias is a slideflow registry name and keeps it.

AtlasPatch's plugin files (`--feature-plugin plugin.py`: a module with
`register_feature_extractors(registry, device, dtype, num_workers)` calling
`register_custom_encoder(...)` with a loader returning `CustomEncoderComponents`) load through
`load_plugin`: the file is run as AtlasPatch would run it (it is the user's own code, named on the
command line), with `atlas_patch.models.patch.custom` answered by this module when AtlasPatch
is not installed, and each encoder is registered with slideflow's `@register_torch` registry.
Tiles reach the plugin's `preprocess` as PIL images, as in AtlasPatch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slideflow as sf

from ..errors import InvalidArgumentError
from ..model import get_spec

#: AtlasPatch extractor name -> slideflow registry name (the same model and weights)
ALIASES = {
    "resnet18": "resnet18_imagenet", "resnet34": "resnet34_imagenet",
    "resnet50": "resnet50_imagenet", "convnext_tiny": "convnext_tiny_imagenet",
    "uni_v1": "uni", "uni_v2": "uni2", "phikon_v1": "phikon", "phikon_v2": "phikon_v2",
    "virchow_v1": "virchow", "virchow_v2": "virchow2", "prov_gigapath": "gigapath",
    "chief-ctranspath": "chief_ctranspath", "midnight": "midnight", "musk": "musk",
    "h_optimus_0": "h_optimus_0", "h_optimus_1": "h_optimus_1", "h0_mini": "h0_mini",
    "conch_v1": "conch", "conch_v15": "conch_v15", "hibou_b": "hibou_b", "hibou_l": "hibou_l",
    "plip": "plip", "lunit_vit_small_patch16_dino": "lunit_vits16",
    "lunit_vit_small_patch8_dino": "lunit_vits8",
    "resnet101": "resnet101_imagenet", "resnet152": "resnet152_imagenet",
    "convnext_small": "convnext_small_imagenet", "convnext_base": "convnext_base_imagenet",
    "convnext_large": "convnext_large_imagenet", "vit_b_16": "vit_b_16_imagenet",
    "vit_b_32": "vit_b_32_imagenet", "vit_l_16": "vit_l_16_imagenet",
    "vit_l_32": "vit_l_32_imagenet", "vit_h_14": "vit_h_14_swag",
    "dinov2_small": "dinov2_vits14", "dinov2_base": "dinov2_vitb14",
    "dinov2_large": "dinov2_vitl14", "dinov2_giant": "dinov2_vitg14",
    "openmidnight": "openmidnight", "lunit_resnet50_bt": "lunit_rn50_bt",
    "lunit_resnet50_swav": "lunit_rn50_swav", "lunit_resnet50_mocov2": "lunit_rn50_mocov2",
    **{name: name for name in (
        "dinov3_vits16", "dinov3_vits16_plus", "dinov3_vitb16", "dinov3_vitl16",
        "dinov3_vitl16_sat", "dinov3_vith16_plus", "dinov3_vit7b16", "dinov3_vit7b16_sat",
        "clip_rn50", "clip_rn101", "clip_rn50x4", "clip_rn50x16", "clip_rn50x64",
        "clip_vit_b_32", "clip_vit_b_16", "clip_vit_l_14", "clip_vit_l_14_336")},
}
#: AtlasPatch extractor names with no model here, and why (`check_names` says it)
UNAVAILABLE = {
    "pathorchestra": "gated timm weights whose architecture (the Hub's config.json) could not "
                     "be checked; AtlasPatch marks its own 512-d as unverified",
    "medsiglip": "gated SigLIP tower (transformers layout): no SigLIP family here yet",
    "quilt_b_32": "a transformers CLIPModel whose vision config (activation) and licence could "
                  "not be checked",
    "quilt_b_16": "a transformers CLIPModel whose vision config (activation) and licence could "
                  "not be checked",
    "quilt_b_16_pmb": "open_clip checkpoint layout: no open_clip family here yet",
    "biomedclip": "open_clip checkpoint layout: no open_clip family here yet",
    "omiclip": "open_clip checkpoint layout: no open_clip family here yet",
}
PRECISIONS = {"float32": False, "float16": "fp16", "bfloat16": "bf16"}


def split_names(text: str) -> list[str]:
    """AtlasPatch's list spelling: names separated by commas and/or spaces."""
    names = [n for part in str(text).replace(",", " ").split() for n in [part.strip()] if n]
    if not names:
        raise InvalidArgumentError("give at least one name (comma or space separated)")
    return names


def check_names(names: list[str]) -> None:
    """Every name an AtlasPatch alias or a slideflow registry name, checked before any weights
    are loaded; the error lists the unknown ones and where the known ones are listed."""
    unknown = []
    for name in names:
        try:
            get_spec(ALIASES.get(name, name))
        except Exception:
            unknown.append(name)
    if unknown:
        why = "".join(f"; {n}: {UNAVAILABLE[n]}" for n in unknown if n in UNAVAILABLE)
        raise InvalidArgumentError(
            f"--feature-extractors: {', '.join(unknown)} not available in slideflow{why}; "
            f"a custom encoder: --feature-plugin; AtlasPatch "
            f"names here: {', '.join(sorted(ALIASES))}, or any slideflow.list_extractors() "
            "name")


def build_extractor(name: str, **kwargs: Any) -> Any:
    """Slideflow's extractor for an AtlasPatch (or slideflow) name, named as asked."""
    ext = sf.build_feature_extractor(ALIASES.get(name, name), **kwargs)
    ext.name = name  # the dataset name in the file: features/<name>
    return ext


def stride_div(patch_size: int, step_size: int | None) -> int:
    """AtlasPatch's `--step-size` as slideflow's stride_div (a whole divisor of the patch)."""
    if step_size is None or int(step_size) == int(patch_size):
        return 1
    step = int(step_size)
    if step <= 0 or patch_size % step:
        raise InvalidArgumentError(f"--step-size {step_size}: slideflow steps by patch / n; "
                                   f"use a step dividing {patch_size}")
    return patch_size // step


def read_mpp_csv(path: Any) -> dict[str, float]:
    """AtlasPatch's `--mpp-csv` (columns wsi,mpp; matched by slide stem)."""
    import csv
    from pathlib import Path

    out: dict[str, float] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or {"wsi", "mpp"} - set(reader.fieldnames):
            raise InvalidArgumentError(f"{path}: --mpp-csv needs columns wsi,mpp")
        for row in reader:
            stem = Path(row["wsi"]).stem
            try:
                out[stem] = float(row["mpp"])
            except ValueError:
                raise InvalidArgumentError(f"{path}: mpp {row['mpp']!r} of {row['wsi']} is "
                                           "not a number") from None
    return out


@dataclass
class CustomEncoderComponents:
    """AtlasPatch's plugin result: the model, a PIL-image transform and the forward pass."""

    model: Any
    preprocess: Callable[[Any], Any]
    forward_fn: Callable[[Any], Any]


class _PluginExtractor:
    """A plugin encoder in the Slideflow-style shape `@register_torch` factories return."""

    def __init__(self, parts: CustomEncoderComponents, dim: int, device: Any):
        import torch

        class Forward(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = parts.model if isinstance(parts.model, torch.nn.Module) else None

            def forward(self, x):
                return parts.forward_fn(x)

        self.model = Forward()
        self.num_features = int(dim)
        self.device = device
        self._pre = parts.preprocess

    def transform(self, batch: Any) -> Any:
        import torch
        from PIL import Image

        tiles = batch.permute(0, 2, 3, 1).cpu().numpy()
        return torch.stack([self._pre(Image.fromarray(t)) for t in tiles]).to(batch.device)


def register_custom_encoder(*, registry: dict[str, Any], name: str, embedding_dim: int,
                            loader: Callable[[Any, Any], CustomEncoderComponents], device: Any,
                            dtype: Any, num_workers: int = 0) -> None:
    """AtlasPatch's plugin call: register `name` (built by `loader(device, dtype)`)."""
    from ..model.extractors.sf3 import register_torch

    def factory(device: Any = None) -> _PluginExtractor:
        import torch

        dev = torch.device(device) if device is not None else torch.device(registry_device)
        parts = loader(dev, dtype)
        if not isinstance(parts, CustomEncoderComponents):
            raise TypeError(f"{name}: the plugin loader must return CustomEncoderComponents")
        return _PluginExtractor(parts, embedding_dim, dev)

    registry_device = device
    register_torch(name)(factory)
    registry[name] = embedding_dim


def load_plugin(path: str | os.PathLike, device: Any, dtype: Any, num_workers: int = 0
                ) -> list[str]:
    """Run an AtlasPatch plugin file; returns the encoder names it registered."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no such plugin file")
    if importlib.util.find_spec("atlas_patch") is None:  # answer AtlasPatch's import path
        for mod in ("atlas_patch", "atlas_patch.models", "atlas_patch.models.patch"):
            sys.modules.setdefault(mod, types.ModuleType(mod))
        sys.modules.setdefault("atlas_patch.models.patch.custom", sys.modules[__name__])
    spec = importlib.util.spec_from_file_location(f"atlaspatch_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    hook = getattr(module, "register_feature_extractors", None)
    if not callable(hook):
        raise InvalidArgumentError(f"{path}: an AtlasPatch plugin defines "
                                   "register_feature_extractors(registry, device, dtype, "
                                   "num_workers)")
    registry: dict[str, Any] = {}
    hook(registry, device, dtype, num_workers)
    if not registry:
        raise InvalidArgumentError(f"{path}: the plugin registered no encoder")
    return list(registry)


__all__ = ["ALIASES", "PRECISIONS", "UNAVAILABLE", "CustomEncoderComponents", "build_extractor", "check_names",
           "load_plugin", "read_mpp_csv", "register_custom_encoder", "split_names",
           "stride_div"]
