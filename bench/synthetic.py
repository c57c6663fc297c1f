"""Larger synthetic pyramids for benchmarks, built from the real pixels of CMU-1-Small-Region.

The slide's tissue region is mirrored to fill the requested size, written as a tiled JPEG
pyramidal TIFF (levels 1, 4, 16) that openslide reads as generic-tiff with an MPP.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

SLIDES = Path(os.environ.get("SLIDEFLOW_TEST_SLIDES",
                             Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
CMU = SLIDES / "CMU-1-Small-Region.svs"


def _canvas(width: int, height: int) -> np.ndarray:
    import openslide

    src = np.asarray(openslide.OpenSlide(str(CMU)).read_region((0, 0), 0, (2220, 2967)))[..., :3]
    block = np.concatenate([np.concatenate([src, src[:, ::-1]], 1),
                            np.concatenate([src[::-1], src[::-1, ::-1]], 1)], 0)
    reps = (-(-height // block.shape[0]), -(-width // block.shape[1]), 1)
    return np.ascontiguousarray(np.tile(block, reps)[:height, :width])


def make_pyramid(path: str | Path, width: int, height: int, mpp: float = 0.499,
                 downsamples: tuple[int, ...] = (1, 4, 16), quality: int = 90) -> Path:
    """Write (once) a tiled JPEG pyramid of `width` x `height` px; returns its path."""
    import tifffile

    path = Path(path)
    if path.exists():
        return path
    base = _canvas(width, height)
    tmp = path.with_suffix(".tmp.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for i, d in enumerate(downsamples):
            lv = base if d == 1 else cv2.resize(base, (width // d, height // d),
                                                interpolation=cv2.INTER_AREA)
            res = 1e4 / (mpp * d)
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                     resolution=(res, res), resolutionunit="CENTIMETER",
                     subfiletype=1 if i else 0)
    os.replace(tmp, path)
    return path
