"""slideflow-gpl: GPL-3.0 feature extractors (CTransPath, RetCCL) registered through the
``slideflow.extractors`` entry point. Importing this package does not import torch."""

from .specs import specs

__all__ = ["specs"]
__version__ = "0.1.0"
