"""Slide-encoder architectures: the code that turns a `SlideEncoderSpec` into a torch module.

One module per architecture; each registers its builder next to the code with
``@register_family("<family>")`` and a spec names its family in ``SlideEncoderSpec.family``.
Adding a family is adding a module here: nothing else lists them. The modules import torch,
so this package is imported only when an encoder is built, never by the registry's listing.
A builder is ``builder(spec, **model_kwargs) -> nn.Module`` mapping (features (N, D), coords
(N, 2) level-0 top-left or None, patch_size_level0) to one (dim,) vector.
"""

from __future__ import annotations

from ...plugins import Builder, FamilyTable

_table = FamilyTable(__name__, __path__, what="slide-encoder family")

register_family = _table.register
family_builder = _table.get
family_names = _table.names
import_failures = _table.failures

__all__ = ["Builder", "family_builder", "family_names", "import_failures", "register_family"]
