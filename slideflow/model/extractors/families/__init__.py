"""Model families: the code that turns an `ExtractorSpec` into a torch model.

One module per architecture family lives in this package. Each registers its builder next to
the architecture code with `@register_family("<family>")` (timm's `@register_model` pattern); a
spec names its family in `ExtractorSpec.family`. Adding a family is adding one module here:
nothing else lists the families. Family modules import torch at the top, so this package is
imported only when an extractor is built (`family_builder`), never by the registry's listing.
A family that needs an optional package (open_clip, transformers, ...) imports it inside its
builder, so one missing extra never hides the other families.

A builder is `builder(spec, **model_kwargs) -> Built` (see `..base.Built`): the module, plus
optional feature head, state-dict conversion and layer root.
"""

from __future__ import annotations

from ...plugins import Builder, FamilyTable

_table = FamilyTable(__name__, __path__, what="model family")

register_family = _table.register   # decorator: register `builder(spec, **kw) -> Built`
family_builder = _table.get         # the builder of a family, or None
family_names = _table.names         # every built-in family (imports torch)
import_failures = _table.failures   # family modules that could not be imported

__all__ = ["Builder", "family_builder", "family_names", "import_failures", "register_family"]
