"""Reinhard colour transfer in CIELAB (Reinhard et al., IEEE CG&A 2001), Slideflow variants.

Each LAB channel of a tile is shifted and scaled so its mean and standard deviation become the
target's. Variants, with Slideflow's names and fits:

- ``reinhard``: brightness standardisation first (90th percentile of the values -> 255).
- ``reinhard_fast``: no brightness standardisation.
- ``reinhard_mask`` / ``reinhard_fast_mask``: statistics over tissue pixels only
  (L* < 100 * threshold, threshold 0.93 as in Slideflow); background pixels are left as they
  were (after brightness standardisation for ``reinhard_mask``).

LAB is sRGB (IEC 61966-2-1) -> XYZ (D65, 2 deg) -> CIELAB with the standard constants, the
same space Slideflow's presets are expressed in. Output is rounded to the nearest uint8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import NormalizerError
from .base import Normalizer
from .ops import (
    LUMA,
    SRGB_TO_LINEAR,
    NumpyOps,
    luminance_below,
    min_tissue,
    not_black,
    standardize_brightness,
)

#: a tile whose LAB standard deviation is below this in any channel is treated as flat
MIN_STD = 1.0

_M = np.array([[0.412453, 0.357580, 0.180423],
               [0.212671, 0.715160, 0.072169],
               [0.019334, 0.119193, 0.950227]])  # linear sRGB -> XYZ (D65)
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65 reference white, 2 deg observer
_TO_XYZN = (_M / _WHITE[:, None]).T.astype(np.float32)  # row vectors: lin @ _TO_XYZN = XYZ / white
_FROM_XYZN = (np.linalg.inv(_M) * _WHITE[None, :]).T.astype(np.float32)
# f = (fx, fy, fz) -> (L, a, b) = f @ _F_TO_LAB + (-16, 0, 0), and back
_F_TO_LAB = np.array([[0.0, 500.0, 0.0], [116.0, -500.0, 200.0], [0.0, 0.0, -200.0]])
_LAB_TO_F = np.linalg.inv(_F_TO_LAB).astype(np.float32)
_F_TO_LAB = _F_TO_LAB.astype(np.float32)
_L_OFFSET = np.array([16.0, 0.0, 0.0], dtype=np.float32)
_EPS, _KAPPA = 0.008856, 7.787  # CIE constants as commonly tabulated (6/29)^3 and 1/(3*(6/29)^2)


def linear_to_lab(ops: Any, lin: Any) -> Any:
    xyzn = ops.mm(lin, ops.f32(_TO_XYZN))
    f = ops.where(xyzn > _EPS, ops.cbrt(ops.maximum(xyzn, 0.0)), xyzn * _KAPPA + 16.0 / 116.0)
    return ops.mm(f, ops.f32(_F_TO_LAB)) - ops.f32(_L_OFFSET)


def lab_to_linear(ops: Any, lab: Any) -> Any:
    f = ops.maximum(ops.mm(lab + ops.f32(_L_OFFSET), ops.f32(_LAB_TO_F)), 0.0)
    xyzn = ops.where(f > 6.0 / 29.0, f * f * f, (f - 16.0 / 116.0) / _KAPPA)
    return ops.mm(xyzn, ops.f32(_FROM_XYZN))


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """CIELAB (float32, L* in [0, 100]) of a uint8 RGB array of any shape (..., 3)."""
    ops = NumpyOps()
    image = np.asarray(image, dtype=np.uint8)
    lin = ops.lut(SRGB_TO_LINEAR, image.reshape(1, -1, 3))
    return linear_to_lab(ops, lin).reshape(image.shape)


def _stats(ops: Any, lab: Any, weight: Any) -> tuple[Any, Any]:
    """Per-image channel mean and (population) std, float64, (N, 3) each."""
    if weight is None:
        total = float(lab.shape[1])
        mean = ops.sum64(lab, 1) / total
        d = lab - ops.f32(mean)[:, None, :]
        var = ops.sum64(d * d, 1) / total
    else:
        total = ops.maximum(ops.sum64(weight, 1), 1.0)[:, None]
        w = weight[..., None]
        mean = ops.sum64(lab * w, 1) / total
        d = lab - ops.f32(mean)[:, None, :]
        var = ops.sum64(d * d * w, 1) / total
    return mean, ops.sqrt(var)


class ReinhardNormalizer(Normalizer):
    fit_spec = {"target_means": (3,), "target_stds": (3,)}
    positive_keys = frozenset({"target_stds"})
    param_defaults = {"threshold": 0.93}

    def __init__(self, method: str = "reinhard", *, backend: str = "numpy",
                 preset: str | None = None, threshold: float = 0.93) -> None:
        if method not in ("reinhard", "reinhard_fast", "reinhard_mask", "reinhard_fast_mask"):
            raise NormalizerError(f"not a Reinhard method: {method!r}")
        self.standardize = method in ("reinhard", "reinhard_mask")
        self.masked = method.endswith("_mask")
        self.threshold = float(threshold)
        super().__init__(method, backend=backend, preset=preset)

    def _analyse(self, ops: Any, x: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
        """Standardised pixels, LAB, tissue mask, LAB mean and std, and the ok flag."""
        n, p = x.shape[0], x.shape[1]
        if self.standardize:
            x, ok = standardize_brightness(ops, x)
        else:
            ok = ops.true(n)
        lin = ops.lut(ops.f32(SRGB_TO_LINEAR), x)
        luma = ops.mm(lin, ops.f32(LUMA[:, None]))[..., 0]
        tissue = (luma < luminance_below(100.0 * self.threshold)) & not_black(ops, x)
        ok = ok & (ops.count(tissue, 1) >= min_tissue(p))
        lab = linear_to_lab(ops, lin)
        weight = ops.f32(tissue) if self.masked else None
        mean, std = _stats(ops, lab, weight)
        ok = ok & (ops.count(std >= MIN_STD, 1) == 3)
        return x, lab, tissue, mean, std, ok

    def _fit_image(self, ops: Any, x: Any) -> dict[str, Any]:
        _, _, _, mean, std, ok = self._analyse(ops, x)
        if not bool(ok[0]):
            raise NormalizerError(
                f"{self.method}: cannot fit to this image (black, blank, flat, or under "
                f"{min_tissue(x.shape[1])} tissue pixels)")
        return {"target_means": mean[0], "target_stds": std[0]}

    def _apply(self, ops: Any, x: Any, fit: dict[str, Any]) -> tuple[Any, Any]:
        xs, lab, tissue, mean, std, ok = self._analyse(ops, x)
        scale = fit["target_stds"][None, :] / ops.where(std > 0, std, 1.0)
        shift = fit["target_means"][None, :] - mean * scale
        lab = lab * ops.f32(scale)[:, None, :] + ops.f32(shift)[:, None, :]
        lin = lab_to_linear(ops, lab)
        ok = ok & ops.rows_all(ops.isfinite(lin))
        out = ops.encode_srgb(ops.where(ops.isfinite(lin), lin, 0.0))
        if self.masked:
            out = ops.where(tissue[..., None], out, xs)
        return out, ok
