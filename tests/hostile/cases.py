"""The hostile corpus: every case registers its input and the behaviour we promise.

`@hostile(id, input, behaviour)` on a test (or `hostile_params` for parametrised ones) records
the case; `test_count.py` checks the total and that README's Reliability table lists every id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

#: id -> (input tried, behaviour)
CASES: dict[str, tuple[str, str]] = {}


def register(case_id: str, what: str, behaviour: str) -> None:
    if case_id in CASES and CASES[case_id] != (what, behaviour):
        raise ValueError(f"hostile case {case_id!r} registered twice")
    CASES[case_id] = (what, behaviour)


def hostile(case_id: str, what: str, behaviour: str) -> Callable[[Any], Any]:
    """Register one case for the decorated test."""
    register(case_id, what, behaviour)
    return lambda fn: fn


def hostile_params(rows: list[tuple[str, str, str, Any]]) -> list[Any]:
    """pytest params from (id, input, behaviour, value) rows, each registered as a case."""
    out = []
    for case_id, what, behaviour, value in rows:
        register(case_id, what, behaviour)
        out.append(pytest.param(value, id=case_id))
    return out
