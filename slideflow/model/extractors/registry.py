"""Which extractors exist: entry-point discovery, lookup, suggestions, plugin registration.

Answers "what exists" without importing torch. Installed distributions export their specs
through the ``slideflow.extractors`` entry-point group (``importlib.metadata``); plugins add
specs at runtime with `register_extractor` (or `load_plugin` on a user's Python file). A
family's model code is imported only when an extractor is built (`resolve_builder`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ...errors import ExtractorNotFound
from ..plugins import entry_point_items
from ..spec_registry import SpecRegistry, did_you_mean, normalize
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

__all__ = ["EXTRACTORS", "GROUP", "TIMM_PREFIX", "get_spec", "is_registered", "known_names",
           "list_extractors", "load_plugin", "normalize", "refresh", "register_extractor",
           "resolve_builder", "sf3_classes", "timm_spec", "unregister_extractor"]


def _discover_installed(errors: MutableMapping[str, str]) -> dict[str, ExtractorSpec]:
    """Specs of every installed distribution; the core catalog when running from a source
    tree whose entry-point metadata is not installed."""
    found: dict[str, ExtractorSpec] = {}
    for ep_name, spec in entry_point_items(GROUP, errors=errors, convert=EXTRACTORS.coerce,
                                           what="extractor"):
        key = normalize(spec.name)
        if key in found and found[key] != spec:
            log.warning("extractor %r from entry point %r shadows an earlier one",
                        spec.name, ep_name)
        found[key] = spec
    if not any(s.distribution == "slideflow" for s in found.values()):
        for spec in core_specs():
            found.setdefault(normalize(spec.name), spec)
    return found


#: the tile-extractor registry (specs, plugins, builders); the functions below are its API
EXTRACTORS: SpecRegistry[ExtractorSpec] = SpecRegistry(
    kind="extractor", discover=_discover_installed, spec_type=ExtractorSpec,
    not_found=ExtractorNotFound,
    family_builder=family_builder, import_failures=import_failures, install_hints=INSTALL,
    reserved_prefix=TIMM_PREFIX, not_built_in="is not a built-in family",
    plugin_noun="feature plugin", register_call="register_extractor")
_load_errors = EXTRACTORS.load_errors


def _discover() -> dict[str, ExtractorSpec]:
    """Specs of every installed distribution, loaded once (thread-safe)."""
    return EXTRACTORS.discovered()


def refresh() -> None:
    """Forget discovered entry points (after installing a distribution at runtime)."""
    EXTRACTORS.refresh()


def _all_specs() -> dict[str, ExtractorSpec]:
    return EXTRACTORS.specs()


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
    spec = EXTRACTORS.find(key)
    if spec is not None:
        return spec
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
    hint = did_you_mean(key, [normalize(n) for n in known_names()], n=5)
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
    return EXTRACTORS.register(spec, builder, replace=replace, source="register_extractor")


def unregister_extractor(name: str) -> None:
    EXTRACTORS.unregister(name)


def resolve_builder(spec: ExtractorSpec) -> tuple[Callable[..., Any], bool]:
    """(builder, is_plugin_callable) for a registered spec (see `SpecRegistry.resolve_builder`)."""
    return EXTRACTORS.resolve_builder(spec)


def load_plugin(path: str | Path) -> list[str]:
    """Execute a user's Python file that calls `register_extractor` (CLI ``--feature-plugin``).

    Returns the names it registered. This runs the file's code: only pass files you trust.
    """
    return EXTRACTORS.load_plugin(path)


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
            "plugin": EXTRACTORS.is_plugin(key), "gated": spec.gated, "family": spec.family,
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
