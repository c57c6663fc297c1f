"""slideflow: whole-slide images to tiles and feature vectors.

`import slideflow as sf` stays fast (no torch, no readers) because every public name is
resolved lazily on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import hooks
from .version import __version__


def _engine_call(extractor: Any, x: Any, **kwargs: Any) -> Any:
    """`extractor(wsi)` / `extractor('x.tfrecords')`: handed to the engine (see `hooks`)."""
    from .pipeline import call_extractor

    return call_extractor(extractor, x, **kwargs)


hooks.register_input_handler(_engine_call)

# public name -> (module, attribute); attribute None means the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    "WSI": ("slideflow.slide.wsi", "WSI"),
    "Project": ("slideflow.project", "Project"),
    "create_project": ("slideflow.project", "create_project"),
    "load_project": ("slideflow.project", "load_project"),
    "Dataset": ("slideflow.dataset", "Dataset"),
    "build_feature_extractor": ("slideflow.two_stage", "build_feature_extractor"),
    "list_extractors": ("slideflow.model", "list_extractors"),
    "rebuild_extractor": ("slideflow.model", "rebuild_extractor"),
    "register_extractor": ("slideflow.model", "register_extractor"),
    "load_plugin": ("slideflow.model", "load_plugin"),
    "DatasetFeatures": ("slideflow.dataset_work", "DatasetFeatures"),
    "build_slide_encoder": ("slideflow.model.slide_encoders", "build_slide_encoder"),
    "list_slide_encoders": ("slideflow.model.slide_encoders", "list_slide_encoders"),
    "register_slide_encoder": ("slideflow.model.slide_encoders", "register_slide_encoder"),
    "rebuild_slide_encoder": ("slideflow.model.slide_encoders", "rebuild_slide_encoder"),
    "generate_slide_embeddings": ("slideflow.slide_embeddings", "generate_slide_embeddings"),
    "embed_slide": ("slideflow.embed", "embed_slide"),
    "embed_slides": ("slideflow.embed", "embed_slides"),
    "embed_patient": ("slideflow.embed", "embed_patient"),
    "embed_patients": ("slideflow.embed", "embed_patients"),
    "EmbeddedSlide": ("slideflow.embed", "EmbeddedSlide"),
    "EmbeddedPatient": ("slideflow.embed", "EmbeddedPatient"),
    "PreprocessingConfig": ("slideflow.embed", "PreprocessingConfig"),
    "ExecutionConfig": ("slideflow.embed", "ExecutionConfig"),
    "errors": ("slideflow.errors", None),
    "io": ("slideflow.io", None),
    "norm": ("slideflow.norm", None),
    "data": ("slideflow.data", None),
    "slide": ("slideflow.slide", None),
    "model": ("slideflow.model", None),
    "mil": ("slideflow.mil", None),
}

__all__ = [
    "DatasetFeatures", "Dataset", "EmbeddedPatient", "EmbeddedSlide", "ExecutionConfig",
    "PreprocessingConfig", "build_slide_encoder", "embed_patient", "embed_patients",
    "embed_slide", "embed_slides", "generate_slide_embeddings", "list_slide_encoders",
    "rebuild_slide_encoder", "register_slide_encoder", "Project", "WSI", "__version__", "build_feature_extractor",
    "create_project", "data", "errors", "io", "list_extractors", "load_plugin", "load_project", "model", "norm",
    "rebuild_extractor", "register_extractor", "slide", "mil",
]

if TYPE_CHECKING:  # pragma: no cover
    from slideflow.dataset import Dataset
    from slideflow.dataset_work import DatasetFeatures
    from slideflow.model import (
        build_feature_extractor,
        list_extractors,
        load_plugin,
        rebuild_extractor,
        register_extractor,
    )
    from slideflow.project import Project, create_project, load_project
    from slideflow.slide.wsi import WSI


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'slideflow' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
