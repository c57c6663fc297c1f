"""Macenko stain normalisation (Macenko et al., ISBI 2009), Slideflow variants.

Per tile: optical density OD = -log((I + 1) / 255); pixels with OD >= beta in every channel
(and not black) are tissue; the two leading eigenvectors of their OD covariance span the
stain plane; the alpha-th and (100 - alpha)-th percentiles of the pixels' angles in that plane
give the two stain vectors (hematoxylin first: the larger red OD). Concentrations are the
least-squares solution for every pixel, scaled so their 99th percentiles (over non-black
pixels: black padding would otherwise set them) match the target's, and the image is rebuilt
with the target stain matrix. Io = 255, alpha = 1, beta = 0.15, as in Slideflow. ``macenko``
standardises brightness first; ``macenko_fast`` does not.

Guards (the tile comes back unchanged instead): too few tissue pixels, a rank-1 OD covariance
(second eigenvalue <= 1e-6: one colour), stain vectors less than 2 degrees apart, a 99th
percentile concentration <= 1e-6, or any non-finite value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import NormalizerError
from .base import Normalizer
from .ops import min_tissue, not_black, percentile, standardize_brightness

#: OD of each uint8 code with Io = 255: -log((v + 1) / 255)
OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 255.0)).astype(np.float32)
EIG_MIN = 1e-6
COS_MAX = float(np.cos(np.deg2rad(2.0)))
MAXC_MIN = 1e-6


def stain_vectors(ops: Any, od: Any, tissue: Any, alpha: float) -> tuple[Any, Any]:
    """Macenko stain matrix (N, 3, 2) float64 (columns H, E) and an ok flag per image."""
    w = ops.f32(tissue)[..., None]
    total = ops.maximum(ops.sum64(w, 1), 2.0)  # (N, 1)
    mean = ops.sum64(od * w, 1) / total
    d = (od - ops.f32(mean)[:, None, :]) * w
    cov = ops.f64(ops.gram(d)) / (total - 1.0)[:, :, None]
    eigvals, eigvecs = ops.eigh(cov)  # ascending
    ok = eigvals[:, 1] > EIG_MIN
    plane = eigvecs[:, :, 1:3]  # (N, 3, 2) float64
    t = ops.mm(od, ops.f32(plane))
    phi = ops.arctan2(t[..., 1], t[..., 0])
    lo, hi = percentile(ops, phi, (alpha, 100.0 - alpha), mask=tissue)
    lo, hi = ops.where(ops.isfinite(lo), lo, 0.0), ops.where(ops.isfinite(hi), hi, 0.0)
    v_min = (plane @ ops.stack([ops.cos(lo), ops.sin(lo)], -1)[:, :, None])[..., 0]
    v_max = (plane @ ops.stack([ops.cos(hi), ops.sin(hi)], -1)[:, :, None])[..., 0]
    h_first = (v_min[:, 0] > v_max[:, 0])[:, None]
    h = ops.where(h_first, v_min, v_max)
    e = ops.where(h_first, v_max, v_min)
    ok = ok & ((h * e).sum(-1) < COS_MAX)
    return ops.stack([h, e], -1), ok


def concentrations(ops: Any, od: Any, he: Any) -> Any:
    """Least-squares stain concentrations (N, P, 2) float32 for stain matrices he (N, 3, 2)."""
    h, e = he[..., 0], he[..., 1]
    g00, g01, g11 = (h * h).sum(-1), (h * e).sum(-1), (e * e).sum(-1)
    det = g00 * g11 - g01 * g01
    det = ops.where(det > 1e-12, det, 1.0)
    pinv = ops.stack([(g11[:, None] * h - g01[:, None] * e) / det[:, None],
                      (g00[:, None] * e - g01[:, None] * h) / det[:, None]], -1)  # (N, 3, 2)
    return ops.mm(od, ops.f32(pinv))


class MacenkoNormalizer(Normalizer):
    fit_spec = {"stain_matrix_target": (3, 2), "target_concentrations": (2,)}
    positive_keys = frozenset({"target_concentrations"})
    param_defaults = {"alpha": 1.0, "beta": 0.15}

    def __init__(self, method: str = "macenko", *, backend: str = "numpy",
                 preset: str | None = None, alpha: float = 1.0, beta: float = 0.15) -> None:
        if method not in ("macenko", "macenko_fast"):
            raise NormalizerError(f"not a Macenko method: {method!r}")
        self.standardize = method == "macenko"
        self.alpha, self.beta = float(alpha), float(beta)
        super().__init__(method, backend=backend, preset=preset)

    def _decompose(self, ops: Any, x: Any) -> tuple[Any, Any, Any, Any]:
        """Stain matrices, concentrations, their 99th percentiles, and the ok flag."""
        n, p = x.shape[0], x.shape[1]
        if self.standardize:
            x, ok = standardize_brightness(ops, x)
        else:
            ok = ops.true(n)
        od = ops.lut(ops.f32(OD_LUT), x)
        lit = not_black(ops, x)
        tissue = (ops.count(od >= self.beta, -1) == 3) & lit
        ok = ok & (ops.count(tissue, 1) >= min_tissue(p))
        he, ok_he = stain_vectors(ops, od, tissue, self.alpha)
        c = concentrations(ops, od, he)
        (max_c,) = percentile(ops, c.swapaxes(1, 2), (99.0,), mask=lit[:, None, :])
        ok = ok & ok_he & ops.rows_all(ops.isfinite(max_c) & (max_c > MAXC_MIN))
        return he, c, max_c, ok

    def _fit_image(self, ops: Any, x: Any) -> dict[str, Any]:
        he, _, max_c, ok = self._decompose(ops, x)
        if not bool(ok[0]):
            raise NormalizerError(
                f"{self.method}: cannot fit to this image (black, blank, one colour, a single "
                f"stain, or under {min_tissue(x.shape[1])} tissue pixels)")
        return {"stain_matrix_target": he[0], "target_concentrations": max_c[0]}

    def _apply(self, ops: Any, x: Any, fit: dict[str, Any]) -> tuple[Any, Any]:
        _, c, max_c, ok = self._decompose(ops, x)
        factor = fit["target_concentrations"][None, :] / ops.where(max_c > MAXC_MIN, max_c, 1.0)
        mix = factor[:, :, None] * fit["stain_matrix_target"].T[None, :, :]  # (N, 2, 3)
        img = 255.0 * ops.exp(-ops.mm(c, ops.f32(mix)))
        finite = ops.isfinite(img)
        ok = ok & ops.rows_all(finite)
        out = ops.to_uint8(ops.rint(ops.clip(ops.where(finite, img, 0.0), 0.0, 255.0)))
        return out, ok
