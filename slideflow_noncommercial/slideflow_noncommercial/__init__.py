"""slideflow-noncommercial: non-commercial pathology foundation models registered through the
``slideflow.extractors`` entry point. Importing this package does not import torch."""

from .specs import specs

__all__ = ["specs"]
__version__ = "0.1.0"
