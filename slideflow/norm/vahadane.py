"""Vahadane stain normalisation (Vahadane et al., IEEE TMI 2016): sparse non-negative stain
separation, written here in plain numpy / torch.

Slideflow runs SPAMS ``trainDL`` or scikit-learn ``DictionaryLearning``; neither is a
dependency here, so the same problem is solved directly. With two stains it is small:

    min_{D >= 0, |D_k| = 1, C >= 0}  1/2 |OD - C D|^2 + lambda |C|_1

- sparse coding: with two atoms the non-negative lasso has a closed form per pixel (try both
  stains active, then each alone; keep the feasible candidate with the lowest objective);
- dictionary update: one pass of block coordinate descent per atom (Mairal et al., JMLR 2010,
  Algorithm 2), projected onto D >= 0 and unit norm;
- N_ITER alternations from the Ruifrok & Johnston H&E vectors, on SAMPLE pixels at fixed
  positions (a golden-ratio sequence from SEED). No randomness: the same tile gives the same
  output, always.

As in Slideflow: brightness standardisation, OD = -log(max(I, 1) / 255), the dictionary is
learned on pixels with L* < 80 (lambda = 0.1), pixels with L* >= 93 are left as they were, and
the H row is the one with the larger red OD. Concentrations use lambda = 0.01 (StainTools'
default). When the fit carries ``target_concentrations`` (a fit to an image does; Slideflow's
presets do not) the concentrations are also scaled to the target's 99th percentiles, as in
the paper; without them the stain vectors alone are swapped, as in Slideflow.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import NormalizerError
from .base import Normalizer
from .macenko import COS_MAX, EIG_MIN, MAXC_MIN
from .ops import (
    LUMA,
    SRGB_TO_LINEAR,
    luminance_below,
    min_tissue,
    not_black,
    percentile,
    standardize_brightness,
)

OD_LUT = (-np.log(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0)).astype(np.float32)
#: Ruifrok & Johnston (Anal Quant Cytol Histol 2001) H and E optical densities, the start point
RUIFROK_HE = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
RUIFROK_HE = RUIFROK_HE / np.linalg.norm(RUIFROK_HE, axis=1, keepdims=True)
DL_LAMBDA = 0.1
CODE_LAMBDA = 0.01
N_ITER = 50
SAMPLE_TRANSFORM = 4096
SAMPLE_FIT = 65536
SEED = 0.5


@lru_cache(maxsize=16)
def sample_positions(n_pixels: int, k: int) -> np.ndarray:
    """The pixel positions the dictionary is learned on: fixed for a given tile size.

    A golden-ratio (Kronecker) sequence started at SEED: spread evenly over the tile, with no
    random generator, so it cannot change with a numpy release.
    """
    if k >= n_pixels:
        return np.arange(n_pixels)
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    points = np.mod(SEED + golden * np.arange(k, dtype=np.float64), 1.0)
    return np.unique(np.floor(points * n_pixels).astype(np.int64))


def nn_lasso2(ops: Any, x: Any, d: Any, lam: float) -> Any:
    """argmin_{c >= 0} 1/2 |x - c d|^2 + lam * sum(c), exactly, for two atoms d (N, 2, 3).

    x is (N, P, 3); returns (N, P, 2) in x's dtype.
    """
    dt = d.swapaxes(1, 2)
    g = d @ dt
    g00, g01, g11 = g[:, 0, 0][:, None], g[:, 0, 1][:, None], g[:, 1, 1][:, None]
    b = ops.mm(x, dt)
    r0, r1 = b[..., 0] - lam, b[..., 1] - lam
    det = g00 * g11 - g01 * g01
    det_ok = det > 1e-12
    det = ops.where(det_ok, det, 1.0)
    both0 = (g11 * r0 - g01 * r1) / det
    both1 = (g00 * r1 - g01 * r0) / det
    one0 = ops.maximum(r0 / ops.where(g00 > 0, g00, 1.0), 0.0)
    one1 = ops.maximum(r1 / ops.where(g11 > 0, g11, 1.0), 0.0)
    # objective up to 1/2 |x|^2: -r.c + 1/2 c'Gc
    f_both = -(r0 * both0 + r1 * both1) + 0.5 * (
        g00 * both0 * both0 + 2.0 * g01 * both0 * both1 + g11 * both1 * both1)
    f0 = -r0 * one0 + 0.5 * g00 * one0 * one0
    f1 = -r1 * one1 + 0.5 * g11 * one1 * one1
    use_both = det_ok & (both0 > 0) & (both1 > 0) & (f_both <= f0) & (f_both <= f1)
    use0 = (f0 <= f1) & ~use_both
    c0 = ops.where(use_both, both0, ops.where(use0, one0, 0.0))
    c1 = ops.where(use_both, both1, ops.where(use0, 0.0, one1))
    return ops.stack([c0, c1], -1)


def learn_dictionary(ops: Any, x: Any, w: Any, d: Any, lam: float, n_iter: int) -> Any:
    """Alternate sparse coding and projected block-coordinate dictionary updates.

    x (N, K, 3) and weights w (N, K) in float64; d (N, 2, 3) the start; returns (N, 2, 3).
    """
    for _ in range(n_iter):
        c = nn_lasso2(ops, x, d, lam) * w[..., None]
        a = ops.gram(c)  # (N, 2, 2)
        bm = ops.cross(x, c)  # (N, 3, 2)
        rows = [d[:, 0, :], d[:, 1, :]]
        for j in (0, 1):
            ajj = a[:, j, j]
            live = ajj > 1e-12
            grad = bm[:, :, j] - (rows[0] * a[:, 0, j][:, None] + rows[1] * a[:, 1, j][:, None])
            u = ops.maximum(rows[j] + grad / ops.where(live, ajj, 1.0)[:, None], 0.0)
            norm = ops.sqrt((u * u).sum(-1))
            keep = (live & (norm > 1e-12))[:, None]
            rows[j] = ops.where(keep, u / ops.where(norm > 1e-12, norm, 1.0)[:, None], rows[j])
        d = ops.stack(rows, 1)
    return d


def second_eigenvalue(ops: Any, x: Any, w: Any) -> Any:
    """Second-largest eigenvalue of the weighted covariance of x (N, K, 3), float64 (N,)."""
    total = ops.maximum(w.sum(1), 2.0)[:, None]
    mean = (x * w[..., None]).sum(1) / total
    d = (x - mean[:, None, :]) * w[..., None]
    return ops.eigh(ops.gram(d) / (total - 1.0)[:, :, None])[0][:, 1]


class VahadaneNormalizer(Normalizer):
    fit_spec = {"stain_matrix_target": (2, 3), "target_concentrations": (2,)}
    optional_keys = frozenset({"target_concentrations"})
    positive_keys = frozenset({"target_concentrations"})
    param_defaults = {"threshold": 0.93}

    def __init__(self, method: str = "vahadane", *, backend: str = "numpy",
                 preset: str | None = None, threshold: float = 0.93) -> None:
        if method != "vahadane":
            raise NormalizerError(f"not a Vahadane method: {method!r}")
        self.threshold = float(threshold)
        super().__init__(method, backend=backend, preset=preset)

    def _decompose(self, ops: Any, x: Any, k: int) -> tuple[Any, ...]:
        n, p = x.shape[0], x.shape[1]
        xs, ok = standardize_brightness(ops, x)
        od = ops.lut(ops.f32(OD_LUT), xs)
        luma = ops.mm(ops.lut(ops.f32(SRGB_TO_LINEAR), xs), ops.f32(LUMA[:, None]))[..., 0]
        lit = not_black(ops, xs)
        stained = luma < luminance_below(100.0 * self.threshold)
        idx = ops.index(sample_positions(p, k))
        w = ops.f64((luma < luminance_below(80.0)) & lit)[:, idx]
        ok = ok & (ops.count(w > 0, 1) >= min_tissue(int(idx.shape[0])))
        sample = ops.f64(od[:, idx])
        ok = ok & (second_eigenvalue(ops, sample, w) > EIG_MIN)  # two stains need rank 2
        start = ops.f64(np.broadcast_to(RUIFROK_HE, (n, 2, 3)).copy())
        d = learn_dictionary(ops, sample, w, start, DL_LAMBDA, N_ITER)
        h_first = (d[:, 0, 0] >= d[:, 1, 0])[:, None]
        h = ops.where(h_first, d[:, 0], d[:, 1])
        e = ops.where(h_first, d[:, 1], d[:, 0])
        ok = ok & ((h * e).sum(-1) < COS_MAX)
        d = ops.stack([h, e], 1)
        c = nn_lasso2(ops, od, ops.f32(d), CODE_LAMBDA)
        (max_c,) = percentile(ops, c.swapaxes(1, 2), (99.0,), mask=lit[:, None, :])
        return xs, stained, d, c, max_c, ok

    def _fit_image(self, ops: Any, x: Any) -> dict[str, Any]:
        _, _, d, _, max_c, ok = self._decompose(ops, x, SAMPLE_FIT)
        ok = ok & ops.rows_all(ops.isfinite(max_c) & (max_c > MAXC_MIN))
        if not bool(ok[0]):
            raise NormalizerError(
                f"{self.method}: cannot fit to this image (black, blank, a single stain, or too "
                "few stained pixels)")
        return {"stain_matrix_target": d[0], "target_concentrations": max_c[0]}

    def _apply(self, ops: Any, x: Any, fit: dict[str, Any]) -> tuple[Any, Any]:
        xs, stained, _, c, max_c, ok = self._decompose(ops, x, SAMPLE_TRANSFORM)
        target_c = fit.get("target_concentrations")
        if target_c is not None:
            ok = ok & ops.rows_all(ops.isfinite(max_c) & (max_c > MAXC_MIN))
            factor = target_c[None, :] / ops.where(max_c > MAXC_MIN, max_c, 1.0)
            c = c * ops.f32(factor)[:, None, :]
        img = 255.0 * ops.exp(-ops.mm(c, ops.f32(fit["stain_matrix_target"])))
        finite = ops.isfinite(img)
        ok = ok & ops.rows_all(finite)
        out = ops.to_uint8(ops.rint(ops.clip(ops.where(finite, img, 0.0), 0.0, 255.0)))
        return ops.where(stained[..., None], out, xs), ok
