"""Which slide encoders exist: core specs, installed distributions, runtime registrations.

Answers without importing torch. Distributions export slide-encoder specs through the SAME
entry-point group as tile extractors (``slideflow.extractors``): the module an entry point
names may define ``slide_encoder_specs()`` beside its tile ``specs()``. One group keeps the
installed metadata unchanged (a new group would need every plug-in reinstalled) and keeps
"installing a distribution" one act for both kinds.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import SlideEncoderNotFound
from ..extractors.registry import GROUP, normalize
from ..plugins import entry_point_items
from .catalog import EXTERNAL
from .catalog import slide_encoder_specs as core
from .families import family_builder, import_failures
from .spec import ExternalSlideEntry, SlideEncoderSpec

log = logging.getLogger(__name__)

ATTRIBUTE = "slide_encoder_specs"

_lock = threading.RLock()
_discovered: dict[str, SlideEncoderSpec] | None = None
_plugins: dict[str, SlideEncoderSpec] = {}
_plugin_builders: dict[str, Callable[..., Any]] = {}
_load_errors: dict[str, str] = {}


def _coerce(obj: Any, source: str) -> SlideEncoderSpec:
    if isinstance(obj, SlideEncoderSpec):
        return obj
    if isinstance(obj, Mapping):
        return SlideEncoderSpec.from_dict(obj)
    raise TypeError(f"{source}: expected SlideEncoderSpec or dict, got {type(obj).__name__}")


def _discover() -> dict[str, SlideEncoderSpec]:
    global _discovered
    with _lock:
        if _discovered is not None:
            return _discovered

        found = {normalize(s.name): s for s in core()}
        for _, spec in entry_point_items(GROUP, errors=_load_errors, attribute=ATTRIBUTE,
                                         convert=_coerce, what="slide encoder"):
            found[normalize(spec.name)] = spec
        _discovered = found
        return found


def refresh() -> None:
    global _discovered
    with _lock:
        _discovered = None
        _load_errors.clear()


def _all() -> dict[str, SlideEncoderSpec]:
    specs = dict(_discover())
    specs.update(_plugins)
    return specs


def _external() -> dict[str, ExternalSlideEntry]:
    return {normalize(e.name): e for e in EXTERNAL}


def get_slide_spec(name: str) -> SlideEncoderSpec:
    """The spec registered under `name` or an alias; errors name the distribution to install."""
    if not isinstance(name, str) or not name.strip():
        raise SlideEncoderNotFound(f"slide encoder name must be a non-empty string, got {name!r}")
    key = normalize(name)
    if key.endswith(".slide"):  # Slideflow's 'gigapath.slide'
        key = key[: -len(".slide")]
    specs = _all()
    if key in specs:
        return specs[key]
    for spec in specs.values():
        if key in {normalize(a) for a in spec.aliases}:
            return spec
    ext = _external().get(key)
    if ext is not None:
        raise SlideEncoderNotFound(
            f"slide encoder {ext.name!r} lives in the {ext.distribution!r} distribution "
            f"(licence: {ext.license}), which is not installed. Install it with:\n"
            f"    {ext.install}")
    names = sorted({s.name for s in specs.values()} | {e.name for e in _external().values()})
    close = difflib.get_close_matches(key, names, n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    raise SlideEncoderNotFound(f"unknown slide encoder {name!r}.{hint} Known: {names}"
                               + (f" (failed entry points: {_load_errors})" if _load_errors
                                  else ""))


def paired_slide_encoder(tile_name: str) -> SlideEncoderSpec | None:
    """The slide encoder that Slideflow's two-stage spelling pairs with a tile extractor."""
    key = normalize(tile_name)
    for spec in _all().values():
        if spec.slideflow_pair and spec.tile_extractor and normalize(spec.tile_extractor) == key:
            return spec
    return None


def register_slide_encoder(spec: SlideEncoderSpec | Mapping[str, Any],
                           builder: Callable[..., Any] | str | None = None, *,
                           replace: bool = False) -> SlideEncoderSpec:
    """Register a slide encoder at runtime; `builder(spec, **kwargs)` returns an nn.Module
    mapping (features (N, D), coords (N, 2), patch_size_level0) to a (dim,) tensor."""
    spec = _coerce(spec, "register_slide_encoder")
    key = normalize(spec.name)
    with _lock:
        if not replace and (key in _discover() or key in _plugins):
            raise ValueError(f"slide encoder {spec.name!r} is already registered; pass "
                             "replace=True to override it")
        if isinstance(builder, str):
            spec = spec.with_(builder=builder)
        elif builder is not None:
            if not callable(builder):
                raise TypeError("builder must be callable or a 'module:callable' string")
            _plugin_builders[key] = builder
        elif spec.builder is None and family_builder(spec.family) is None:
            raise ValueError(f"{spec.name}: give a builder (family {spec.family!r} is not "
                             "built in)")
        _plugins[key] = spec
    return spec


def unregister_slide_encoder(name: str) -> None:
    with _lock:
        _plugins.pop(normalize(name), None)
        _plugin_builders.pop(normalize(name), None)


def resolve_builder(spec: SlideEncoderSpec) -> Callable[..., Any]:
    key = normalize(spec.name)
    if key in _plugin_builders:
        return _plugin_builders[key]
    if spec.builder:  # a registered spec's own "module:callable" (never from a config)
        if ":" not in spec.builder:
            raise SlideEncoderNotFound(f"{spec.name}: builder {spec.builder!r} is not "
                                       "'module:callable'")
        module_name, attr = spec.builder.split(":", 1)
        return getattr(importlib.import_module(module_name), attr)
    builder = family_builder(spec.family)
    if builder is None:
        failed = import_failures()
        hint = f" (family modules that failed to import: {failed})" if failed else ""
        raise SlideEncoderNotFound(f"{spec.name}: no builder for family {spec.family!r}{hint}")
    return builder


def list_slide_encoders(installed_only: bool = False):
    """A pandas DataFrame of every known slide encoder (torch is not imported)."""
    import pandas as pd

    rows = []
    specs = _all()
    for key, s in specs.items():
        rows.append({
            "name": s.name, "level": s.level, "dim": s.dim, "tile_extractor": s.tile_extractor,
            "tile_features": s.tile_features, "tile_px": s.tile_px,
            "tile_um": None if s.tile_um is None else str(s.tile_um),
            "positional": s.positional, "license": s.license, "distribution": s.distribution,
            "installed": True, "plugin": key in _plugins, "gated": s.gated,
            "weights": s.weights.describe() if s.family != "mean" else "none (no parameters)",
            "install": "",
        })
    if not installed_only:
        for key, e in _external().items():
            if key not in specs:
                rows.append({"name": e.name, "level": "slide", "dim": e.dim,
                             "tile_extractor": e.tile_extractor, "tile_features": None,
                             "tile_px": None, "tile_um": None, "positional": "",
                             "license": e.license, "distribution": e.distribution,
                             "installed": False, "plugin": False, "gated": True,
                             "weights": "", "install": e.install})
    df = pd.DataFrame(rows)
    for col in ("dim", "tile_features", "tile_px"):
        df[col] = df[col].astype("Int64")
    return df.sort_values(["installed", "distribution", "name"],
                          ascending=[False, True, True]).reset_index(drop=True)
