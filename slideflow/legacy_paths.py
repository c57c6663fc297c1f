"""Old module paths kept working after the package was sorted into layer folders.

`slideflow.features`, `slideflow.extract.job`, `slideflow.dataset`, ... are documented paths
(and Slideflow 3 spellings) that moved under `slideflow/engine/` and `slideflow/project/`.
Importing an old path gives the very module object of the new one (not a copy), so
``monkeypatch.setattr(slideflow.features, ...)`` and ``mock.patch("slideflow.features.x")``
act on the code that runs. Resolution is lazy: nothing is imported until an old path is.
No file sits at an old path, so git follows the moved files' history.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

# old module (or package: its submodules follow) -> new module
MOVED: dict[str, str] = {
    "slideflow.cli_encode": "slideflow.cli.encode",
    "slideflow.demo": "slideflow.cli.demo",
    "slideflow.cli_mil": "slideflow.cli.mil",
    "slideflow.cli_errors": "slideflow.cli.errors",
    "slideflow.cli_extractors": "slideflow.cli.extractors",
    "slideflow.doctor": "slideflow.cli.doctor",
    "slideflow.cli_atlaspatch": "slideflow.cli.atlaspatch",
    "slideflow.dataset": "slideflow.project.dataset",
    "slideflow.dataset_work": "slideflow.project.dataset_work",
    "slideflow.annotations": "slideflow.project.annotations",
    "slideflow.sources": "slideflow.project.sources",
    "slideflow.data": "slideflow.project.data",
    "slideflow.pipeline": "slideflow.engine.pipeline",
    "slideflow.fanout": "slideflow.engine.fanout",
    "slideflow.features": "slideflow.engine.features",
    "slideflow.bag_runner": "slideflow.engine.bag_runner",
    "slideflow.report": "slideflow.engine.report",
    "slideflow.selection": "slideflow.engine.selection",
    "slideflow.progress": "slideflow.engine.progress",
    "slideflow.embed": "slideflow.engine.embed",
    "slideflow.slide_embeddings": "slideflow.engine.slide_embeddings",
    "slideflow.two_stage": "slideflow.engine.two_stage",
    "slideflow.tfrecord_decode": "slideflow.engine.tfrecord_decode",
    "slideflow.distributed": "slideflow.engine.distributed",
    "slideflow.extract": "slideflow.engine.extract",
    "slideflow.model.slide_encoders.outputs": "slideflow.engine.slide_embedding_outputs",
}


def new_path(name: str) -> str | None:
    """The current module path for an old one (``slideflow.extract.job`` ->
    ``slideflow.engine.extract.job``); None when `name` did not move."""
    head = name
    while head:
        if head in MOVED:
            return MOVED[head] + name[len(head):]
        if "." not in head:
            return None
        head = head.rsplit(".", 1)[0]
    return None


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module object of its new path."""

    def __init__(self, target: str):
        self.target = target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias spec on the shared module: give it back its own
        module.__spec__ = self._spec

    def get_code(self, fullname: str) -> CodeType | None:
        """For ``python -m slideflow.demo`` (runpy asks the loader for code)."""
        spec = importlib.util.find_spec(self.target)
        loader = spec.loader if spec is not None else None
        return loader.get_code(self.target) if hasattr(loader, "get_code") else None  # type: ignore[union-attr]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("slideflow."):
            return None
        new = new_path(fullname)
        if new is None:
            return None
        loaded = sys.modules.get(new)
        found = loaded.__spec__ if loaded is not None else importlib.util.find_spec(new)
        if found is None:
            return None
        return importlib.util.spec_from_loader(  # origin: runpy sets sys.argv[0] from it
            fullname, _Alias(new), origin=found.origin,
            is_package=found.submodule_search_locations is not None)


def install() -> None:
    """Put the finder first, so an old submodule path never loads a second copy of a module
    through its (aliased) parent's ``__path__``."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
