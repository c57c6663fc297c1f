"""Argument checks shared by every entry point (Python API, CLI, configs).

Each concept is checked once, where it enters, with one error that names the argument, the
value and the fix (`InvalidArgumentError`, a `ValueError`). Geometry (tile_px / tile_um /
stride_div) is parsed by `slideflow.slide.geometry.TileGeometry`, built on these.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

from .errors import InvalidArgumentError


def positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`; bools, fractions, NaN and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or not float(value).is_integer():
            raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def optional_positive_int(value: Any, name: str, *, minimum: int = 1) -> int | None:
    """None, or `positive_int(value)`."""
    return None if value is None else positive_int(value, name, minimum=minimum)


def positive_float(value: Any, name: str) -> float:
    """`value` as a finite float > 0 (inf, NaN, 0 and negatives are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def fraction(value: Any, name: str) -> float:
    """`value` as a float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not 0.0 <= float(value) <= 1.0:
        raise InvalidArgumentError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def finite(value: Any, name: str) -> float:
    """`value` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


#: microns per pixel accepted from a user or a file: wider than any scanner or thumbnail, and
#: narrow enough that tile extents stay ordinary integers (1e-300 overflowed the grid maths)
MPP_RANGE = (1e-4, 1e4)


def mpp_value(value: Any, name: str = "mpp") -> float:
    """`value` as a microns-per-pixel float inside MPP_RANGE."""
    v = positive_float(value, name)
    lo, hi = MPP_RANGE
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be between {lo:g} and {hi:g} microns per pixel, "
                                   f"got {value!r}")
    return v


def renamed(new_value: Any, old_value: Any, new: str, old: str) -> Any:
    """The value of an option that was renamed from `old` to `new`: the old spelling still
    works, with one DeprecationWarning naming the new one; both at once must agree."""
    if old_value is None:
        return new_value
    if new_value is not None and new_value != old_value:
        raise InvalidArgumentError(f"{old}={old_value!r} and {new}={new_value!r} given; "
                                   f"{old} is the old name of {new}: give {new} only")
    warnings.warn(f"{old} is the old name of {new} (same meaning); use {new}",
                  DeprecationWarning, stacklevel=3)
    return old_value
