"""Synthetic feature bags with a planted signal, for the MIL tests and bench.

Every tile is N(0, 1) noise; in a positive bag `planted` tiles are shifted by `shift` along one
fixed unit direction. Bags are written as .pt + .index.npz with a bags_config.json, exactly as
generate_feature_bags writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slideflow.io.bags import write_bag
from slideflow.io.bags_config import write_bags_config

TILE = 256


def bags_config(dim: int, extractor: str = "synthetic", tile_px: int = 224,
                tile_um: int = 112) -> dict:
    return {"extractor": {"class": f"slideflow.test.{extractor}", "kwargs": {}},
            "normalizer": None, "num_features": dim, "tile_px": tile_px, "tile_um": tile_um,
            "provenance": {"extractor": extractor, "patch_size_level0": TILE}}


def make_bags(folder: Path, n_bags: int = 120, dim: int = 32, tiles: tuple[int, int] = (40, 64),
              planted: int = 4, shift: float = 3.0, seed: int = 0, patients_per: int = 1,
              extractor: str = "synthetic", config: dict | None = None
              ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Write bags into `folder` (with `config` as their bags_config.json when given); return
    (annotations slide/patient/label/score, planted rows)."""
    rng = np.random.default_rng(seed)
    direction = np.zeros(dim, np.float32)
    direction[0] = 1.0
    folder.mkdir(parents=True, exist_ok=True)
    rows, planted_rows = [], {}
    for i in range(n_bags):
        slide = f"slide_{i:03d}"
        positive = (i // patients_per) % 2 == 1
        n = int(rng.integers(tiles[0], tiles[1] + 1))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        hot = np.sort(rng.choice(n, planted, replace=False)) if positive else np.array([], int)
        x[hot] += shift * direction
        planted_rows[slide] = hot
        side = int(np.ceil(np.sqrt(n)))
        cells = np.arange(n)
        coords = np.stack([(cells % side) * TILE, (cells // side) * TILE], 1).astype(np.int64)
        write_bag(folder / f"{slide}.pt", x, coords, patch_size_level0=TILE)
        rows.append({"slide": slide, "patient": f"pt_{i // patients_per:03d}",
                     "label": "pos" if positive else "neg",
                     "score": float(len(hot) * 1.0 + rng.normal(0, 0.1))})
    write_bags_config(folder, config or bags_config(dim, extractor))
    return pd.DataFrame(rows), planted_rows
