"""Shapes of official checkpoint keys, for tests that write state dicts in an author's layout.

Each helper returns {key: shape}; a test fills the shapes with random tensors and loads them
strictly into our module, so a renamed or missing key fails the load.
"""

from __future__ import annotations


def linear(prefix: str, out_f: int, in_f: int, bias: bool = True) -> dict[str, tuple]:
    """`<prefix>.weight` (out, in) and, with `bias`, `<prefix>.bias` (out,)."""
    d: dict[str, tuple] = {f"{prefix}.weight": (out_f, in_f)}
    if bias:
        d[f"{prefix}.bias"] = (out_f,)
    return d


def layernorm(prefix: str, n: int) -> dict[str, tuple]:
    """`<prefix>.weight` and `<prefix>.bias`, both (n,)."""
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,)}
