"""The command line (face layer): `slideflow ...` and `python -m slideflow ...`.

`commands` holds the typer app and its main commands; `encode` (encode-slide /
encode-patient), `mil` (mil train / predict), `extractors`, `doctor` and `atlaspatch` hold
theirs, imported when they run (`lazy`: `slideflow --help` lists them from its table);
`errors` turns usage errors into one `error:` line; `inputs` turns arguments into jobs; `demo` is the `make demo` walk-through.
``slideflow.cli:main`` (the console script), ``from slideflow.cli import app`` and
``slideflow.cli.features`` (any name of `commands`) keep working.
"""

from __future__ import annotations

from typing import Any

from . import commands, inputs
from .commands import app, main
from .inputs import ray_argv, shard

__all__ = ["app", "main", "ray_argv", "shard"]


#: the argument helpers' names from when they lived in `slideflow/cli.py` (now `inputs`)
_INPUTS = {"_jobs": "make_jobs", "_expand": "expand_paths", "_read_mpp_csv": "read_mpp_csv",
           "_stride_div": "stride_div_of", "_ray_arg": "ray_arg", "_weights_map": "weights_map"}


def __getattr__(name: str) -> Any:
    """The other names of `commands` and `inputs`, as when both were `slideflow/cli.py`."""
    for module, attr in ((commands, name), (inputs, _INPUTS.get(name, name))):
        if hasattr(module, attr):
            return getattr(module, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
