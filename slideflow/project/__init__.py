"""The research layer: a project folder, its sources, annotations and datasets.

`project` (settings.json, `sf.Project`), `dataset` (`sf.Dataset`), `dataset_work` (what a
dataset runs through the engine), `annotations`, `sources` and `data` (Slideflow's
``sf.data`` spellings). ``from slideflow.project import Project`` keeps working.
"""

from __future__ import annotations

from .project import Project, create_project, is_project, load_project

__all__ = ["Project", "create_project", "is_project", "load_project"]
