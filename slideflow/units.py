"""Tile-size units shared by every layer: magnification strings and Slideflow's folder label.

No I/O and no slideflow imports: the slide layer (geometry), the TFRecord layout (folder labels)
and the research layer all parse `tile_um` the same way.
"""

from __future__ import annotations

import re

import numpy as np

_MAG_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]\s*$")


def parse_magnification(value: str) -> float | None:
    """'20x' -> 20.0; anything else -> None."""
    m = _MAG_RE.match(value) if isinstance(value, str) else None
    return float(m.group(1)) if m else None


def tile_um_label(tile_px: int, tile_um: float | int | str) -> str:
    """Slideflow folder label: '256px_128um' (microns) or '256px_20x' (magnification).

    Int-valued floats are written as ints (302.0 -> '302um') so one geometry maps to one folder
    (Slideflow 3 would write '302.0um' for a float).
    """
    if isinstance(tile_um, str):
        text = tile_um.strip().lower()
        if text.endswith("x"):
            mag = parse_magnification(text)
            if mag is None or mag <= 0:
                raise ValueError(f"bad magnification {tile_um!r}; use e.g. '20x'")
            return f"{int(tile_px)}px_{text}"
        try:
            tile_um = float(text)
        except ValueError:
            raise ValueError(f"tile_um {tile_um!r} is neither microns nor a magnification "
                             "like '20x'") from None
    if isinstance(tile_um, bool) or not isinstance(tile_um, (int, float, np.integer,
                                                             np.floating)):
        raise TypeError(f"tile_um must be a number or a magnification string, got {tile_um!r}")
    um = float(tile_um)
    if not um > 0 or not np.isfinite(um):
        raise ValueError(f"tile_um must be positive, got {tile_um!r}")
    return f"{int(tile_px)}px_{int(um) if um.is_integer() else um}um"
