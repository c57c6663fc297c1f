"""Names that come from data (a manifest's sample_id, a slide's file name) become file names in
an output folder; text that comes from data ends up in CSV files opened in spreadsheets.

`check_output_name` accepts a name only if it is one plain path component (no '/', '\\', '..',
NUL or control characters, not hidden, not too long), and `confined` checks that a path built
from it resolves inside the output folder, so `../x` or `/abs/x` never writes outside `-o`.
`csv_safe` neutralises cells a spreadsheet would execute (`=HYPERLINK(...)`, `+`, `-`, `@`,
tab/CR prefixes) by prefixing an apostrophe, as OWASP recommends for CSV injection.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError

#: longest output name in UTF-8 bytes: NAME_MAX (255) less room for suffixes such as
#: '.index.npz.tmp-<pid>-<host>-<random>'
MAX_NAME_BYTES = 200
#: first characters that make a spreadsheet evaluate a cell
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name an output file, or None when it can."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if name in (".", "..") or name.startswith("."):
        return "it starts with '.' (a hidden file, or a path step)"
    bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})
    if bad:
        return f"it holds control characters {[hex(ord(c)) for c in bad]}"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_output_name(name: Any, what: str = "slide name") -> str:
    """`name` when it is one safe file-name component, else InvalidArgumentError naming it."""
    why = name_problem(name)
    if why is not None:
        raise InvalidArgumentError(f"{what} {name!r} cannot name an output file: {why}; "
                                   "rename it (e.g. a manifest sample_id of letters, digits, "
                                   "'-', '_' and '.')")
    return name


def confined(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` when it resolves inside `folder` (links followed), else InvalidArgumentError."""
    root = Path(folder).resolve()
    real = Path(path).resolve()
    if real != root and root not in real.parents:
        raise InvalidArgumentError(f"{path} resolves to {real}, outside the output folder "
                                   f"{root}; refusing to write there")
    return Path(path)


def csv_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: strings starting with a formula
    character get a leading apostrophe; other values are returned as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_unsafe(value: Any) -> Any:
    """The inverse of `csv_safe` for CSVs we read back (annotations): an apostrophe before a
    formula character is dropped."""
    if isinstance(value, str) and value.startswith("'") and value[1:2] and \
            value[1:2] in FORMULA_PREFIXES:
        return value[1:]
    return value
