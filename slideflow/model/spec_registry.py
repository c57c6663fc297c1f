"""One registry of model specs, shared by tile extractors and slide encoders.

Both kinds answer the same questions without importing torch: which specs exist (installed
distributions' entry points plus the core catalog, discovered once), which spec a name or alias
means, which close names to suggest, which plugins were registered at runtime (with their
builders), and which callable builds a spec. Only what truly differs is passed in: the spec
type, how discovery combines entry points with the core catalog, the kind's family table, its
exception and its words in messages. Every change of state holds one re-entrant lock, so
plugins may be registered from several threads while others look names up.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

Builder = Callable[..., Any]


class Spec(Protocol):
    """What the registry reads from a spec: its name, aliases, builder path and family."""

    name: str
    aliases: tuple[str, ...]
    builder: str | None
    family: str

    def with_(self, **changes: Any) -> Any: ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any: ...


SpecT = TypeVar("SpecT", bound=Spec)


def normalize(name: str) -> str:
    """Lookup key of a name: case-insensitive, '-' and ' ' equivalent to '_'."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def did_you_mean(key: str, candidates: Iterable[str], n: int) -> str:
    """' Did you mean: 'a', 'b'?' for the close candidates of `key`, or ''."""
    close = difflib.get_close_matches(key, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""


class SpecRegistry(Generic[SpecT]):
    """Specs of one kind: discovered once, looked up by name or alias, extended by plugins.

    `discover(errors)` returns {normalized name: spec} for the installed distributions and the
    core catalog (entry points that fail are recorded in `errors`); `spec_type.from_dict` turns
    a dict into a spec; `family_builder(family)` and `import_failures()` come from the kind's
    family table; `install_hints` maps a distribution to the command that installs it.
    """

    def __init__(self, *, kind: str, discover: Callable[[MutableMapping[str, str]],
                                                         dict[str, SpecT]],
                 spec_type: type[SpecT], not_found: type[Exception],
                 family_builder: Callable[[str], Builder | None],
                 import_failures: Callable[[], Mapping[str, str]],
                 install_hints: Mapping[str, str] | None = None,
                 reserved_prefix: str | None = None, not_built_in: str = "is not built in",
                 plugin_noun: str | None = None, register_call: str = "register"):
        self.kind = kind
        self.spec_type = spec_type
        self.not_found = not_found
        self._discover_fn = discover
        self._family_builder = family_builder
        self._import_failures = import_failures
        self._install = dict(install_hints or {})
        self._reserved = reserved_prefix
        self._not_built_in = not_built_in
        self._plugin_noun = plugin_noun or f"{kind} plugin"
        self._register_call = register_call
        self._lock = threading.RLock()
        self._discovered: dict[str, SpecT] | None = None
        self._plugins: dict[str, SpecT] = {}
        self._builders: dict[str, Builder] = {}
        #: entry points that failed to load: {entry point: error}
        self.load_errors: dict[str, str] = {}

    def coerce(self, obj: Any, source: str) -> SpecT:
        """`obj` as a spec (a spec, or a dict of its fields); `source` names the caller."""
        if isinstance(obj, self.spec_type):
            return obj
        if isinstance(obj, Mapping):
            return self.spec_type.from_dict(obj)
        raise TypeError(f"{source}: expected {self.spec_type.__name__} or dict, got "
                        f"{type(obj).__name__}")

    # ------------------------------------------------------------------------------ state
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's lock, for a check and a registration that must be one step."""
        with self._lock:
            yield

    def discovered(self) -> dict[str, SpecT]:
        """Specs of the installed distributions and the core catalog, found once."""
        with self._lock:
            if self._discovered is None:
                self._discovered = self._discover_fn(self.load_errors)
            return self._discovered

    def refresh(self) -> None:
        """Forget discovered entry points (after installing a distribution at runtime)."""
        with self._lock:
            self._discovered = None
            self.load_errors.clear()

    def specs(self) -> dict[str, SpecT]:
        """{normalized name: spec}: discovered specs, then runtime plugins (which win)."""
        with self._lock:
            out = dict(self.discovered())
            out.update(self._plugins)
            return out

    def is_plugin(self, name: str) -> bool:
        """Whether `name` was registered at runtime (not discovered)."""
        return normalize(name) in self._plugins

    def plugin_names(self) -> list[str]:
        """Names of the runtime plugins, in registration order."""
        with self._lock:
            return [s.name for s in self._plugins.values()]

    # ----------------------------------------------------------------------------- lookup
    def find(self, key: str, specs: Mapping[str, SpecT] | None = None) -> SpecT | None:
        """The spec whose normalized name or alias is `key` (the first in order), or None."""
        specs = self.specs() if specs is None else specs
        if key in specs:
            return specs[key]
        for spec in specs.values():
            if key in {normalize(a) for a in spec.aliases}:
                return spec
        return None

    # ------------------------------------------------------------------------ registration
    def register(self, spec: SpecT | Mapping[str, Any], builder: Builder | str | None = None,
                 *, replace: bool = False, source: str = "register") -> SpecT:
        """Register a spec at runtime; `builder` is a callable, a ``"module:callable"`` string
        or None when the spec names its own builder or a built-in family. A registration
        replaces the previous one of that name whole (its callable builder included)."""
        spec = self.coerce(spec, source)
        key = normalize(spec.name)
        if self._reserved and key.startswith(normalize(self._reserved)):
            raise ValueError(f"names starting with {self._reserved!r} are reserved")
        with self._lock:
            if not replace and (key in self.discovered() or key in self._plugins):
                raise ValueError(f"{self.kind} {spec.name!r} is already registered; pass "
                                 "replace=True to override it")
            if builder is None and spec.builder is None and \
                    self._family_builder(spec.family) is None:
                raise ValueError(f"{spec.name}: give a builder (family {spec.family!r} "
                                 f"{self._not_built_in})")
            if builder is not None and not isinstance(builder, str) and not callable(builder):
                raise TypeError("builder must be callable or a 'module:callable' string")
            if isinstance(builder, str):
                spec = spec.with_(builder=builder)
            self._builders.pop(key, None)
            if callable(builder):
                self._builders[key] = builder
            self._plugins[key] = spec
        return spec

    def unregister(self, name: str) -> None:
        with self._lock:
            self._plugins.pop(normalize(name), None)
            self._builders.pop(normalize(name), None)

    def resolve_builder(self, spec: SpecT) -> tuple[Builder, bool]:
        """(builder, is_plugin_callable) for a registered spec.

        Only registered specs (installed entry points, explicit registrations, the core
        catalog) reach this point, so the module imported here is never chosen by a config.
        """
        key = normalize(spec.name)
        with self._lock:
            plugin = self._builders.get(key)
        if plugin is not None:
            return plugin, True
        if spec.builder:
            return self._import_builder(spec), False
        builder = self._family_builder(spec.family)
        if builder is None:
            failed = self._import_failures()
            hint = f" (family modules that failed to import: {failed})" if failed else ""
            raise self.not_found(f"{spec.name}: no builder for family {spec.family!r}{hint}")
        return builder, False

    def _import_builder(self, spec: SpecT) -> Builder:
        path = str(spec.builder)
        if ":" not in path:
            raise self.not_found(f"{spec.name}: builder {path!r} is not 'module:callable'")
        module_name, attr = path.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise  # the builder module exists but one of its own imports is missing
            dist = exc.name.split(".")[0].replace("_", "-")
            hint = f": {self._install[dist]}" if dist in self._install else ""
            raise self.not_found(f"{spec.name} ({getattr(spec, 'distribution', '?')}) is built "
                                 f"by {module_name}, which is not installed{hint}") from exc
        return getattr(module, attr)

    def load_plugin(self, path: str | Path) -> list[str]:
        """Execute a user's Python file that registers specs; the names it registered.

        This runs the file's code: only pass files you trust.
        """
        path = Path(path).expanduser().resolve()
        if not path.is_file() or path.suffix != ".py":
            raise FileNotFoundError(f"{self._plugin_noun} must be an existing .py file: {path}")
        before = set(self._plugins)
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        module_name = f"slideflow_plugin_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load plugin {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with self._lock:
            added = [s.name for k, s in self._plugins.items() if k not in before]
        if not added:
            log.warning("plugin %s registered no %s (call slideflow.%s(spec, builder) in it)",
                        path, self.kind, self._register_call)
        return added
