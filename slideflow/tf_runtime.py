"""Import TensorFlow safely next to PyTorch (the one place slideflow imports it).

TensorFlow and Triton (which torch loads through `torch._dynamo`, e.g. on `import torchvision`)
each carry LLVM. When TensorFlow's copy is loaded first, loading Triton's `libtriton` afterwards
crashes the process (segmentation fault; seen with tensorflow-cpu 2.21 and torch 2.14). Loaded
in the other order both work, so Triton's library is loaded first when it is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def import_tensorflow() -> Any:
    """The `tensorflow` module, with Triton's library loaded before it when available."""
    if "tensorflow" not in sys.modules and "triton._C.libtriton" not in sys.modules:
        try:
            if importlib.util.find_spec("triton") is not None:
                importlib.import_module("triton._C.libtriton")
        except Exception:  # a broken Triton must not stop TensorFlow users
            pass
    return importlib.import_module("tensorflow")
