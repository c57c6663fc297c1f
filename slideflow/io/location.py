"""Where an input lives: a local path, or a URL (s3://, gs://, https://, any fsspec protocol).

A URL stays a `str` everywhere a slide path goes (a `Path` would fold `//` and lose it); any
other value becomes a `Path`. Reading URLs is `slideflow.remote`'s business.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def is_url(value: Any) -> bool:
    """True for a string (not a Path) of the form scheme://..., other than file://."""
    if not isinstance(value, str):
        return False
    m = _SCHEME.match(value)
    return bool(m) and m.group(1).lower() != "file"


def slide_path(value: Any) -> Any:
    """A slide location as given: a URL stays a str, anything else becomes a Path."""
    return value if is_url(value) else Path(value)


__all__ = ["is_url", "slide_path"]
