"""Third-party warnings that tell a slideflow user nothing, silenced where they start.

`tqdm.auto` (imported by timm, huggingface_hub and transformers) warns "IProgress not found.
Please update jupyter and ipywidgets" on import in a Jupyter kernel without ipywidgets. Our
progress display is rich; those libraries' bars never show during a build. So `tqdm.auto` is
imported once with that one warning off, before any model family is imported.
"""

from __future__ import annotations

import contextlib
import sys
import warnings


def quiet_tqdm_import() -> None:
    """Import tqdm.auto with its notebook 'IProgress not found' warning off (once)."""
    if "tqdm.auto" in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        with contextlib.suppress(ImportError):
            import tqdm.auto  # noqa: F401
