"""The research layer: a project folder, its sources, annotations and datasets.

`project` (settings.json, `sf.Project`), `dataset` (`sf.Dataset`), `dataset_work` (what a
dataset runs through the engine), `annotations`, `sources` and `data` (Slideflow's
``sf.data`` spellings). ``from slideflow.project import Project`` keeps working; the names are
resolved on first use, so ``slideflow.project.data`` or ``.sources`` load without the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Project", "create_project", "is_project", "load_project"]

if TYPE_CHECKING:  # pragma: no cover
    from .project import Project, create_project, is_project, load_project


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".project", __name__), name)
    globals()[name] = value
    return value
