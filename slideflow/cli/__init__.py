"""The command line (face layer): `slideflow ...` and `python -m slideflow ...`.

`commands` holds the typer app and its commands, `encode` the encode-slide / encode-patient
commands, `demo` the `make demo` walk-through. ``slideflow.cli:main`` (the console script) and
``from slideflow.cli import app`` keep working.
"""

from __future__ import annotations

from .commands import app, main, ray_argv, shard

__all__ = ["app", "main", "ray_argv", "shard"]
