"""Model families: the code that turns an `ExtractorSpec` into a torch model.

One module per architecture family lives in this package. Each registers its builder next to
the architecture code with `@register_family("<family>")` (timm's `@register_model` pattern); a
spec names its family in `ExtractorSpec.family`. Adding a family is adding one module here:
nothing else lists the families. Family modules import torch at the top, so this package is
imported only when an extractor is built (`family_builder`), never by the registry's listing.
A family that needs an optional package (open_clip, transformers, ...) imports it inside its
builder, so one missing extra never hides the other families.

A builder is `builder(spec, **model_kwargs) -> Built` (see `..base.Built`): the module, plus
optional feature head, state-dict conversion and layer root.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from typing import Any

Builder = Callable[..., Any]

_builders: dict[str, Builder] = {}
_failed: dict[str, str] = {}  # module -> import error, reported when its family is asked for
_lock = threading.Lock()
_loaded = False


def register_family(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register `builder(spec, **kwargs) -> Built` for the family `name`."""

    def wrap(builder: Builder) -> Builder:
        other = _builders.get(name)
        if other is not None and other is not builder:
            raise ValueError(f"model family {name!r} is registered twice "
                             f"({other.__module__} and {builder.__module__})")
        _builders[name] = builder
        return builder

    return wrap


def _load_all() -> None:
    """Import every module of this package once (their decorators fill the table)."""
    global _loaded
    with _lock:
        if _loaded:
            return
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            try:
                importlib.import_module(f"{__name__}.{info.name}")
            except ImportError as exc:
                _failed[info.name] = f"{type(exc).__name__}: {exc}"
        _loaded = True


def import_failures() -> dict[str, str]:
    """Family modules that could not be imported (module -> error)."""
    _load_all()
    return dict(_failed)


def family_builder(name: str) -> Builder | None:
    """The builder registered for family `name`, or None."""
    _load_all()
    return _builders.get(name)


def family_names() -> list[str]:
    """Every built-in family (imports the family modules, hence torch)."""
    _load_all()
    return sorted(_builders)


__all__ = ["family_builder", "family_names", "import_failures", "register_family"]
