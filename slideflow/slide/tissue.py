"""Thumbnail-level tissue QC and per-tile background fractions.

Everything here works on one low-resolution "QC image" of the slide (a few µm per pixel), so
background is rejected before any tile is read and no tile is read twice. Per-tile fractions are
exact box averages over that image, computed with a summed-area table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .mask import BinaryMask, as_mask, is_mask_image
from .mask import tile_fractions as tile_fractions  # public here too: wsi and tests use it

#: default QC resolution (µm/px); also bounded so that a tile covers >= 32 QC pixels
QC_MPP = 4.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 255] (uint8)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


def otsu_mask(rgb: np.ndarray) -> np.ndarray:
    """True where tissue: Otsu threshold on the median-blurred HSV saturation.

    Stained tissue is saturated, glass and white padding are not. Returns all False for a blank
    image (Otsu on a constant image would otherwise call everything tissue).
    """
    sat = cv2.medianBlur(saturation(rgb), 7)
    if int(sat.max()) - int(sat.min()) < 8:
        return np.zeros(sat.shape, bool)
    thresh, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return sat > max(thresh, 8)


def blur_mask(rgb: np.ndarray, sigma: float = 3.0, threshold: float = 0.02) -> np.ndarray:
    """True where in focus: smoothed Laplacian energy above `threshold` (grey in [0, 1]).

    Out-of-focus regions, pen-free glass and smooth artefacts have little high-frequency energy.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    lap = np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))
    energy = cv2.GaussianBlur(lap, (0, 0), sigma)
    return energy > threshold


def whitespace_map(rgb: np.ndarray, threshold: float = 230) -> np.ndarray:
    """Slideflow semantics: a pixel is whitespace when its mean over RGB exceeds `threshold`."""
    return rgb.mean(axis=2) > threshold


def grayspace_map(rgb: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Slideflow semantics: a pixel is grayspace when its HSV saturation (0–1) is below
    `threshold`."""
    return saturation(rgb).astype(np.float32) / 255.0 < threshold


QCMethod = str | Callable[[np.ndarray], np.ndarray]


def qc_method_name(method: Any) -> str:
    """How a QC method is recorded: its name, a mask image's path, or the callable's name."""
    if isinstance(method, (str, Path)):
        return str(method)
    if getattr(method, "path", None) is not None:  # a BinaryMask read from a file
        return str(method.path)
    return getattr(method, "__name__", type(method).__name__)

_BUILTIN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "otsu": otsu_mask,
    "blur": blur_mask,
}


def qc_mask(rgb: np.ndarray, method: QCMethod | list[QCMethod]) -> np.ndarray:
    """Combined keep-mask (True = keep) for one QC method, 'both', a callable, or a list.

    A callable takes the RGB QC image and returns a bool mask of the same height/width
    with True where tissue should be kept. A mask image (a path with an image suffix, or a
    `slideflow.slide.mask.BinaryMask`) of the whole slide, any size, is scaled to the QC image.
    """
    methods = method if isinstance(method, (list, tuple)) else [method]
    keep = np.ones(rgb.shape[:2], bool)
    for m in methods:
        if is_mask_image(m) or isinstance(m, BinaryMask):
            mask = as_mask(m)
            h, w = keep.shape
            mask.scales((w, h))  # aspect check, naming the file
            keep &= mask.resized(w, h)
        elif m == "both":
            keep &= otsu_mask(rgb) & blur_mask(rgb)
        elif isinstance(m, str):
            if m not in _BUILTIN:
                raise ValueError(f"unknown QC method {m!r}; use 'otsu', 'blur', 'both', a "
                                 "callable or a mask image path (.png/.tif)")
            keep &= _BUILTIN[m](rgb)
        elif callable(m):
            out = np.asarray(m(rgb))
            if out.shape != keep.shape:
                raise ValueError(
                    f"QC callable returned shape {out.shape}, expected {keep.shape} (H, W)"
                )
            keep &= out.astype(bool)
        else:
            raise TypeError(f"QC method must be a string or callable, got {type(m).__name__}")
    return keep
