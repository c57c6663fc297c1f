"""Other tools' documented names on slideflow's engine (facades, never a second pipeline).

    slideflow.compat.slide2vec            Model.from_preset, Pipeline, PreprocessingConfig, ...
    slideflow.compat.slide2vec.encoders   encoder_registry.require(...): dense / attention
    slideflow.compat.tiatoolbox           DeepFeatureExtractor(...).run(...)
    slideflow.compat.atlaspatch           extractor aliases, options, plugin files
                                          (`slideflow atlaspatch process|encode-slide`)

Each submodule maps the other tool's names, options and outputs onto slideflow's own
functions. A documented option with no meaning here is refused with a message naming
slideflow's equivalent, or accepted and reported once in the log; none is ignored silently.
Submodules import torch lazily; importing this package costs nothing.
"""

from __future__ import annotations

import logging

log = logging.getLogger("slideflow.compat")
_reported: set[tuple[str, str]] = set()


def report_once(tool: str, message: str) -> None:
    """Log `message` (an accepted option that does nothing here) once per process."""
    key = (tool, message)
    if key not in _reported:
        _reported.add(key)
        log.warning("%s compatibility: %s", tool, message)


__all__ = ["report_once"]
