"""Plug-in machinery shared by the two model registries (tile extractors, slide encoders).

- `entry_point_items`: the items that installed distributions export through an entry-point
  group (``importlib.metadata``; a broken plug-in is recorded, never hides the others).
- `FamilyTable`: architecture families registered next to their code with a decorator
  (timm's ``@register_model`` pattern); the modules of a package are imported on first lookup,
  so listing what exists never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

Builder = Callable[..., Any]


def entry_point_items(group: str, *, errors: MutableMapping[str, str],
                      attribute: str | None = None,
                      convert: Callable[[Any, str], Any] | None = None,
                      what: str = "plug-in") -> Iterator[tuple[str, Any]]:
    """(entry point name, item) for every item exported through `group`.

    An entry point names a callable (or an iterable) of items; with `attribute`, the module it
    names is asked for that attribute instead (absent: the entry point exports none). Items
    pass through ``convert(item, source)``. An entry point that fails (import, call or
    conversion) contributes nothing; its error is stored in `errors` and logged.
    """
    for ep in entry_points(group=group):
        try:
            if attribute is None:
                obj = ep.load()
            else:
                obj = getattr(importlib.import_module(ep.module), attribute, None)
                if obj is None:
                    continue
            items = list(obj() if callable(obj) else obj)
            if convert is not None:
                items = [convert(item, f"entry point {ep.name}") for item in items]
        except Exception as exc:  # one broken plug-in must not hide the others
            errors[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("cannot load %s entry point %r (%s): %s", what, ep.name, ep.value, exc)
            continue
        for item in items:
            yield ep.name, item


class FamilyTable:
    """name -> builder, filled by `register` decorators in the modules of one package."""

    def __init__(self, package: str, path: Iterable[str], what: str = "model family"):
        self.package = package
        self.path = list(path)
        self.what = what
        self._builders: dict[str, Builder] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._loaded = False

    def register(self, name: str) -> Callable[[Builder], Builder]:
        """Decorator: register `builder` for the family `name` (twice is an error)."""

        def wrap(builder: Builder) -> Builder:
            other = self._builders.get(name)
            if other is not None and other is not builder:
                raise ValueError(f"{self.what} {name!r} is registered twice "
                                 f"({other.__module__} and {builder.__module__})")
            self._builders[name] = builder
            return builder

        return wrap

    def _load_all(self) -> None:
        with self._lock:
            if self._loaded:
                return
            for info in sorted(pkgutil.iter_modules(self.path), key=lambda m: m.name):
                try:
                    importlib.import_module(f"{self.package}.{info.name}")
                except ImportError as exc:  # a missing optional extra hides only its family
                    self._failed[info.name] = f"{type(exc).__name__}: {exc}"
            self._loaded = True

    def get(self, name: str) -> Builder | None:
        self._load_all()
        return self._builders.get(name)

    def names(self) -> list[str]:
        self._load_all()
        return sorted(self._builders)

    def failures(self) -> dict[str, str]:
        """Modules of the package that could not be imported (module -> error)."""
        self._load_all()
        return dict(self._failed)
