"""The upward calls in the package, inverted: how `extractor(wsi)` reaches the engine.

`model/` takes arrays and tensors only and never imports the engine, yet users call
`extractor(wsi)` and `extractor('x.tfrecords')`. So the model layer asks this module for the
handler of inputs it does not know, and the engine side provides it: the package root registers
a function that imports `slideflow.pipeline` on first use. The root always runs before any
submodule, so the handler is there whichever module a user imported first, and the model layer
depends only on this leaf module (no torch, no slide, no engine here).

The same holds for Slideflow's `SlideEncoder.generate_and_save(bags, outdir)`: writing files
is the engine's job, so the model layer calls the ``"embed_bag_folder"`` entry of `call`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: handler(extractor, x, **kwargs) -> result, or NotImplemented when it does not take `x`
InputHandler = Callable[..., Any]

_handlers: list[InputHandler] = []


def register_input_handler(handler: InputHandler) -> None:
    """Add a handler for extractor inputs that are not arrays (first registered, first asked)."""
    if handler not in _handlers:
        _handlers.append(handler)


def call_input_handlers(extractor: Any, x: Any, **kwargs: Any) -> Any:
    """The first handler's answer that is not NotImplemented, else NotImplemented."""
    for handler in list(_handlers):
        result = handler(extractor, x, **kwargs)
        if result is not NotImplemented:
            return result
    return NotImplemented


_provided: dict[str, Callable[..., Any]] = {}


def provide(name: str, fn: Callable[..., Any]) -> None:
    """Register the engine-side function that the model layer reaches as ``call(name, ...)``."""
    _provided[name] = fn


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run the function registered under `name` (the package root registers them on import)."""
    try:
        fn = _provided[name]
    except KeyError:
        raise RuntimeError(f"no engine function registered as {name!r}; import slideflow first") from None
    return fn(*args, **kwargs)
