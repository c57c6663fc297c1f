"""Which extractors exist: entry-point discovery, lookup, suggestions, plugin registration.

Answers "what exists" without importing torch. Installed distributions export their specs
through the ``slideflow.extractors`` entry-point group (``importlib.metadata``); plugins add
specs at runtime with `register_extractor` (or `load_plugin` on a user's Python file). A
family's model code is imported only when an extractor is built (`resolve_builder`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...errors import ExtractorNotFound
from ..plugins import entry_point_items
from .catalog import EXTERNAL, INSTALL
from .catalog import specs as core_specs
from .families import family_builder, import_failures
from .spec import NO_WEIGHTS, ExternalEntry, ExtractorSpec, hf

log = logging.getLogger(__name__)

GROUP = "slideflow.extractors"
TIMM_BIBTEX = ("@misc{rw2019timm, author={Wightman, Ross}, title={PyTorch Image Models}, "
               "year={2019}, publisher={GitHub}, doi={10.5281/zenodo.4414861}, "
               "howpublished={https://github.com/huggingface/pytorch-image-models}}")
TIMM_PREFIX = "timm:"

_lock = threading.RLock()
_discovered: dict[str, ExtractorSpec] | None = None
_plugins: dict[str, ExtractorSpec] = {}
_plugin_builders: dict[str, Callable[..., Any]] = {}
_load_errors: dict[str, str] = {}


def normalize(name: str) -> str:
    """Lookup key of a name: case-insensitive, '-' and ' ' equivalent to '_'."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _coerce(obj: Any, source: str) -> ExtractorSpec:
    if isinstance(obj, ExtractorSpec):
        return obj
    if isinstance(obj, Mapping):
        return ExtractorSpec.from_dict(obj)
    raise TypeError(f"{source}: expected ExtractorSpec or dict, got {type(obj).__name__}")


def _discover() -> dict[str, ExtractorSpec]:
    """Specs of every installed distribution, loaded once (thread-safe)."""
    global _discovered
    with _lock:
        if _discovered is not None:
            return _discovered
        found: dict[str, ExtractorSpec] = {}
        for ep_name, spec in entry_point_items(GROUP, errors=_load_errors, convert=_coerce,
                                               what="extractor"):
            key = normalize(spec.name)
            if key in found and found[key] != spec:
                log.warning("extractor %r from entry point %r shadows an earlier one",
                            spec.name, ep_name)
            found[key] = spec
        if not any(s.distribution == "slideflow" for s in found.values()):
            # running from a source tree whose entry-point metadata is not installed
            for spec in core_specs():
                found.setdefault(normalize(spec.name), spec)
        _discovered = found
        return found


def refresh() -> None:
    """Forget discovered entry points (after installing a distribution at runtime)."""
    global _discovered
    with _lock:
        _discovered = None
        _load_errors.clear()


def _all_specs() -> dict[str, ExtractorSpec]:
    specs = dict(_discover())
    specs.update(_plugins)
    return specs


def _alias_index(specs: Mapping[str, ExtractorSpec]) -> dict[str, str]:
    index: dict[str, str] = {}
    for key, spec in specs.items():
        for alias in spec.aliases:
            index.setdefault(normalize(alias), key)
    return index


def _external() -> dict[str, ExternalEntry]:
    return {normalize(e.name): e for e in EXTERNAL}


def sf3_classes() -> dict[str, str]:
    """Slideflow 3 extractor class path -> registry name, from the specs (installed or not).

    Derived, not listed by hand: a spec declares its `sf3_class`; names of distributions that
    are not installed come from the install hints, so rebuilding their bags names the package.
    """
    out = {e.sf3_class: e.name for e in EXTERNAL if e.sf3_class}
    out.update({s.sf3_class: s.name for s in _all_specs().values() if s.sf3_class})
    return out


def known_names() -> list[str]:
    """Every name (installed or not) and alias, for suggestions."""
    specs = _all_specs()
    names = {s.name for s in specs.values()}
    names.update(a for s in specs.values() for a in s.aliases)
    names.update(e.name for e in _external().values())
    return sorted(names)


def is_registered(name: str) -> bool:
    try:
        get_spec(name)
    except ExtractorNotFound:
        return False
    return True


def get_spec(name: str) -> ExtractorSpec:
    """The spec registered under `name` (or an alias); `timm:<model>` makes one on the fly.

    Raises `ExtractorNotFound` naming the distribution to install when the name lives in a
    licence-split distribution that is not installed, or suggesting close names otherwise.
    """
    if not isinstance(name, str) or not name.strip():
        raise ExtractorNotFound(f"extractor name must be a non-empty string, got {name!r}")
    if name.strip().lower().startswith(TIMM_PREFIX):
        return timm_spec(name.strip()[len(TIMM_PREFIX):])
    key = normalize(name)
    specs = _all_specs()
    if key in specs:
        return specs[key]
    alias = _alias_index(specs).get(key)
    if alias is not None:
        return specs[alias]
    if key.endswith((".tile", ".slide")):
        return _suffixed(name, key)
    ext = _external().get(key)
    if ext is not None:
        raise ExtractorNotFound(
            f"extractor {ext.name!r} lives in the {ext.distribution!r} distribution "
            f"(licence: {ext.license}), which is not installed. Install it with:\n"
            f"    {INSTALL[ext.distribution]}\n"
            f"or `pip install {ext.distribution}`; then call slideflow.model.refresh() or "
            "restart Python."
            + (f" (entry points that failed to load: {_load_errors})" if _load_errors else ""))
    close = difflib.get_close_matches(key, [normalize(n) for n in known_names()], n=5,
                                      cutoff=0.5)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    broken = f" (entry points that failed to load: {sorted(_load_errors)})" if _load_errors \
        else ""
    raise ExtractorNotFound(
        f"unknown feature extractor {name!r}.{hint} See slideflow.list_extractors() for every "
        f"known name, or use 'timm:<model name>' with a local checkpoint.{broken}")


def _suffixed(name: str, key: str) -> ExtractorSpec:
    """Slideflow's '<name>.tile' is the tile encoder '<name>'; '<name>.slide' (a slide-level
    encoder) is refused naming the tile encoder, unless registered under that exact name."""
    base, _, kind = key.rpartition(".")
    if kind == "tile":
        return get_spec(base)
    spec = get_spec(base)  # ExtractorNotFound when the base is unknown too
    raise ExtractorNotFound(
        f"{name!r} is a slide-level encoder; build_feature_extractor builds tile encoders. "
        f"Use {spec.name!r} (or {spec.name + '.tile'!r}) for tile features; no slide encoder "
        f"is registered under {name!r}.")


def timm_spec(model_name: str) -> ExtractorSpec:
    """A spec for any timm architecture (weights from `weights=` or the timm Hub repo)."""
    model_name = model_name.strip()
    if not model_name:
        raise ExtractorNotFound("'timm:' needs a model name, e.g. 'timm:resnet50'")
    arch = model_name.split(".")[0]
    return ExtractorSpec(
        name=f"{TIMM_PREFIX}{model_name}", family="timm", dim=None, input_px=224,
        license="see the checkpoint's licence", citation=TIMM_BIBTEX,
        interpolation="bicubic", build={"timm": arch, "kwargs": {}, "dynamic": True},
        weights=_timm_hub_source(model_name),
        expected_unexpected=("head.*", "fc.*", "classifier.*", "head.fc.*", "last_linear.*"),
        description=f"timm architecture {arch}; weights from weights= or the Hugging Face cache",
    )


def _timm_hub_source(model_name: str):
    return hf(f"timm/{model_name}") if "." in model_name else NO_WEIGHTS


def register_extractor(spec: ExtractorSpec | Mapping[str, Any],
                       builder: Callable[..., Any] | str | None = None, *,
                       replace: bool = False) -> ExtractorSpec:
    """Register an extractor at runtime (a plugin).

    `builder(spec, **model_kwargs)` returns a ``torch.nn.Module`` mapping a normalised float
    NCHW batch to (N, spec.dim) features; if the user passes ``weights=``, they are loaded into
    that module with the same strict checks as built-in extractors. `builder` may also be a
    ``"module:callable"`` string, or None when ``spec.family`` is a built-in family.
    """
    spec = _coerce(spec, "register_extractor")
    key = normalize(spec.name)
    if key.startswith(normalize(TIMM_PREFIX)):
        raise ValueError("names starting with 'timm:' are reserved")
    with _lock:
        if not replace and (key in _discover() or key in _plugins):
            raise ValueError(f"extractor {spec.name!r} is already registered; pass "
                             "replace=True to override it")
        if builder is None and spec.builder is None and family_builder(spec.family) is None:
            raise ValueError(f"{spec.name}: give a builder (family {spec.family!r} is not a "
                             "built-in family)")
        if isinstance(builder, str):
            spec = spec.with_(builder=builder)
            _plugin_builders.pop(key, None)
        elif builder is not None:
            if not callable(builder):
                raise TypeError("builder must be callable or a 'module:callable' string")
            _plugin_builders[key] = builder
        _plugins[key] = spec
    return spec


def unregister_extractor(name: str) -> None:
    with _lock:
        _plugins.pop(normalize(name), None)
        _plugin_builders.pop(normalize(name), None)


def resolve_builder(spec: ExtractorSpec) -> tuple[Callable[..., Any], bool]:
    """(builder, is_plugin_callable) for a registered spec.

    Only specs that are registered (installed entry points, explicit registrations, the
    built-in catalog or 'timm:') reach this point, so the module imported here is never chosen
    by a config file.
    """
    key = normalize(spec.name)
    if key in _plugin_builders:
        return _plugin_builders[key], True
    if spec.builder:
        if ":" not in spec.builder:
            raise ExtractorNotFound(f"{spec.name}: builder {spec.builder!r} is not "
                                    "'module:callable'")
        module_name, attr = spec.builder.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise  # the builder module exists but one of its own imports is missing
            dist = exc.name.split(".")[0].replace("_", "-")
            hint = f": {INSTALL[dist]}" if dist in INSTALL else ""
            raise ExtractorNotFound(f"{spec.name} ({spec.distribution}) is built by "
                                    f"{module_name}, which is not installed{hint}") from exc
        return getattr(module, attr), False
    builder = family_builder(spec.family)
    if builder is None:
        failed = import_failures()
        hint = f" (family modules that failed to import: {failed})" if failed else ""
        raise ExtractorNotFound(f"{spec.name}: no builder for family {spec.family!r}{hint}")
    return builder, False


def load_plugin(path: str | Path) -> list[str]:
    """Execute a user's Python file that calls `register_extractor` (CLI ``--feature-plugin``).

    Returns the names it registered. This runs the file's code: only pass files you trust.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file() or path.suffix != ".py":
        raise FileNotFoundError(f"feature plugin must be an existing .py file: {path}")
    before = set(_plugins)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"slideflow_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load plugin {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    added = [_plugins[k].name for k in _plugins if k not in before]
    if not added:
        log.warning("plugin %s registered no extractor (call "
                    "slideflow.register_extractor(spec, builder) in it)", path)
    return added


def list_extractors(installed_only: bool = False):
    """A pandas DataFrame of every known extractor, including those whose distribution is not
    installed (``installed`` False, with the command to install it)."""
    import pandas as pd

    rows = []
    specs = _all_specs()
    for key, spec in specs.items():
        rows.append({
            "name": spec.name, "dim": spec.dim, "input_px": spec.input_px,
            "license": spec.license, "distribution": spec.distribution, "installed": True,
            "plugin": key in _plugins, "gated": spec.gated, "family": spec.family,
            "weights": spec.weights.describe(), "aliases": ", ".join(spec.aliases),
            "install": "",
        })
    if not installed_only:
        for key, ext in _external().items():
            if key in specs:
                continue
            rows.append({
                "name": ext.name, "dim": None, "input_px": None,
                "license": ext.license, "distribution": ext.distribution, "installed": False,
                "plugin": False, "gated": None, "family": "", "weights": "", "aliases": "",
                "install": INSTALL[ext.distribution],
            })
    df = pd.DataFrame(rows, columns=["name", "dim", "input_px", "license", "distribution",
                                     "installed", "plugin", "gated", "family", "weights",
                                     "aliases", "install"])
    df["dim"] = df["dim"].astype("Int64")
    df["_core"] = df["distribution"] != "slideflow"
    df = df.sort_values(["_core", "distribution", "name"]).drop(columns="_core")
    return df.reset_index(drop=True)
