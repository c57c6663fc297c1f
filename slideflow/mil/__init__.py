"""Multiple-instance learning on feature bags (Slideflow 3's `sf.mil` names).

    config = sf.mil.mil_config('attention_mil', lr=1e-4, epochs=20)
    sf.mil.train_mil(config, train, val, outcomes='label', bags='bags/', outdir='mil/')
    sf.mil.eval_mil('mil/', test, 'label', 'bags/', outdir='eval/')
    y_pred, y_att = sf.mil.predict_slide('mil/', 'slide.svs', attention=True)

`mil_config` is torch-free; training, evaluation and prediction import torch when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import MILConfig, MILError, mil_config

_LAZY = {
    "train_mil": "slideflow.mil.train",
    "MILResult": "slideflow.mil.train",
    "eval_mil": "slideflow.mil.evaluate",
    "predict_mil": "slideflow.mil.evaluate",
    "predict_slide": "slideflow.mil.slide_predict",
    "load_model": "slideflow.mil.inference",
    "build_model": "slideflow.mil.models",
}

__all__ = ["MILConfig", "MILError", "mil_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'slideflow.mil' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
