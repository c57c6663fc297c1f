"""The command line (face layer): `slideflow ...` and `python -m slideflow ...`.

`commands` holds the typer app and its main commands; `encode` (encode-slide /
encode-patient), `mil` (mil train / predict), `extractors`, `doctor` register theirs on it;
`errors` turns usage errors into one `error:` line; `inputs` turns arguments into jobs; `demo` is the `make demo` walk-through.
``slideflow.cli:main`` (the console script), ``from slideflow.cli import app`` and
``slideflow.cli.features`` (any name of `commands`) keep working.
"""

from __future__ import annotations

from typing import Any

from . import commands
from .commands import app, main
from .inputs import ray_argv, shard

__all__ = ["app", "main", "ray_argv", "shard"]


def __getattr__(name: str) -> Any:
    """The other names of `commands` (its command functions), as when it was `slideflow/cli.py`."""
    try:
        return getattr(commands, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
