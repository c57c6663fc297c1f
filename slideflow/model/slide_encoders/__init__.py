"""Slide (and patient) encoders: tile features + coordinates -> one vector per slide.

Specs are data (`SlideEncoderSpec`); the registry answers without importing torch; the
architectures (`families`: one module per family, registered with `@register_family`) are
imported when an encoder is built.
"""

from __future__ import annotations

from .registry import (
    get_slide_spec,
    list_slide_encoders,
    paired_slide_encoder,
    refresh,
    register_slide_encoder,
    unregister_slide_encoder,
)
from .spec import SlideEncoderSpec

__all__ = [
    "SlideEncoderSpec", "build_slide_encoder", "get_slide_spec", "list_slide_encoders",
    "paired_slide_encoder", "rebuild_slide_encoder", "refresh", "register_slide_encoder",
    "unregister_slide_encoder",
]


def __getattr__(name: str):
    if name in ("build_slide_encoder", "rebuild_slide_encoder"):
        from . import factory

        return getattr(factory, name)
    if name == "SlideEncoder":
        from .base import SlideEncoder

        return SlideEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
