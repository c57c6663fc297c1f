"""Array namespaces and the pixel arithmetic the methods share.

Each method is written once against `NumpyOps` / `TorchOps` (the dozen array operations it
needs), so the numpy and torch backends run the same arithmetic and agree to rounding. torch is
imported only when a `TorchOps` is made.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

#: a pixel whose brightest channel is below this is "black" (padding, pen), never tissue
BLACK_LEVEL = 10
#: a tile needs at least this fraction of tissue pixels (and MIN_TISSUE_PX) to be normalised
MIN_TISSUE_FRACTION = 0.01
MIN_TISSUE_PX = 16

# sRGB (IEC 61966-2-1) decoding of the 256 uint8 codes, and the linear values half-way between
# neighbouring codes: searchsorted(BOUNDS, v) is round(255 * encode(v)), exactly, for any v.
_codes = np.arange(256, dtype=np.float64) / 255.0


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


SRGB_TO_LINEAR = _srgb_decode(_codes).astype(np.float32)
SRGB_BOUNDS = _srgb_decode((np.arange(255, dtype=np.float64) + 0.5) / 255.0).astype(np.float32)
# encode_srgb: a 4096-cell grid over [0, 1] gives each linear value a code that is exact or one
# too low (no two boundaries share a cell: their smallest gap, 1 / (255 * 12.92), is wider than a
# cell), and one comparison with the next boundary fixes it.
_GRID = 4096
_CELL_CODE = np.searchsorted(SRGB_BOUNDS, np.arange(_GRID + 1) / _GRID, side="right")
_NEXT_BOUND = np.append(SRGB_BOUNDS, np.float32(np.inf)).astype(np.float32)
#: linear-RGB -> relative luminance Y (row 2 of the sRGB -> XYZ matrix, D65)
LUMA = np.array([0.212671, 0.715160, 0.072169], dtype=np.float32)


# OpenBLAS runs a GEMM on several threads once m*n*k passes 65536 * 4; when another process
# holds a core, those threads can stall for a scheduler tick each (measured here: 16 ms instead
# of 0.08 ms for a 65536x3 @ 3x3 product). Per-pixel products are therefore cut into row blocks
# small enough to stay single-threaded.
_BLAS_ROWS = 8192


@lru_cache(maxsize=64)
def _row_block(rows: int, k: int, d: int) -> int:
    """The largest divisor of `rows` whose block stays under OpenBLAS's threading threshold."""
    limit = max(1, min(rows, (65536 * 4 - 1) // max(1, k * d), _BLAS_ROWS))
    for b in range(limit, 0, -1):
        if rows % b == 0:
            return b
    return 1


def luminance_below(lightness: float) -> float:
    """The luminance Y below which CIE L* < `lightness` (for L* > 8, the cube-root branch)."""
    return float(((lightness + 16.0) / 116.0) ** 3)


# --- array namespaces -------------------------------------------------------------------------


class NumpyOps:
    """The handful of array operations the methods need, for numpy."""

    name = "numpy"
    inf = np.inf
    #: images per step: one 256 px image's float temporaries still fit in cache (measured at
    #: 256 px: 1 per step is 10-40 % faster than 4 or 32)
    chunk = 1

    def f32(self, a: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.float32)

    def f64(self, a: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.float64)

    def index(self, a: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.intp)

    log, exp, sqrt = staticmethod(np.log), staticmethod(np.exp), staticmethod(np.sqrt)
    cos, sin, arctan2 = staticmethod(np.cos), staticmethod(np.sin), staticmethod(np.arctan2)
    floor, isfinite, rint = staticmethod(np.floor), staticmethod(np.isfinite), staticmethod(np.rint)
    where, cbrt = staticmethod(np.where), staticmethod(np.cbrt)
    maximum, minimum = staticmethod(np.maximum), staticmethod(np.minimum)

    def clip(self, x: Any, lo: Any, hi: Any) -> Any:
        return np.clip(x, lo, hi)

    def stack(self, seq: list, axis: int) -> np.ndarray:
        return np.stack(seq, axis=axis)

    def smallest(self, x: np.ndarray, k: int) -> np.ndarray:
        """The k smallest values along the last axis, ascending."""
        return np.sort(x, axis=-1)[..., :k]

    def take_last(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """x[..., idx[...]] for one index per row."""
        return np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]

    def sum64(self, x: np.ndarray, axis: int) -> np.ndarray:
        """Accurate sum as float64. Over the pixel axis of (N, P, C) float32 the axis is made
        contiguous first: numpy then sums pairwise (error ~1e-7) and 8x faster than a strided
        float64 reduction; a strided float32 one would be off by ~1e-3."""
        if axis == 1 and x.ndim == 3 and x.dtype == np.float32:
            return np.ascontiguousarray(np.swapaxes(x, 1, 2)).sum(axis=-1).astype(np.float64)
        return x.sum(axis=axis, dtype=np.float64)

    def count(self, mask: np.ndarray, axis: int) -> np.ndarray:
        return mask.sum(axis=axis)

    def amax(self, x: np.ndarray, axis: int) -> np.ndarray:
        return x.max(axis=axis)

    def eigh(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.eigh(a)

    def encode_srgb(self, linear: np.ndarray) -> np.ndarray:
        """round(255 * sRGB-encode(linear)) as uint8 (same as searchsorted on SRGB_BOUNDS)."""
        v = np.clip(np.nan_to_num(linear, nan=0.0), 0.0, 1.0)
        code = _CELL_CODE[(v * _GRID).astype(np.intp)]
        return (code + (v >= _NEXT_BOUND[code])).astype(np.uint8)

    def to_uint8(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.uint8)

    def lut(self, table: np.ndarray, x: np.ndarray) -> np.ndarray:
        """table[x] for a shared 256-entry table (x uint8)."""
        return table[x]

    def lut_per_image(self, tables: np.ndarray, x: np.ndarray) -> np.ndarray:
        """tables[i][x[i]] for one 256-entry table per image."""
        return np.stack([t[xi] for t, xi in zip(tables, x)])

    def histogram(self, x: np.ndarray) -> np.ndarray:
        """(N, 256) counts of the uint8 values of each image."""
        return np.stack([np.bincount(xi.ravel(), minlength=256) for xi in x])

    def cumsum(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.cumsum(x, axis=axis)

    def mm(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Per-pixel product x @ m: x (N, P, K), m (K, D) shared or (N, K, D) per image."""
        n, p, k = x.shape
        d = m.shape[-1]
        b = _row_block(p, k, d)
        if b < 256:  # awkward pixel counts: no BLAS at all
            return np.einsum("npk,kd->npd" if m.ndim == 2 else "npk,nkd->npd", x, m)
        m4 = m[None, None] if m.ndim == 2 else m[:, None]
        return (x.reshape(n, p // b, b, k) @ m4).reshape(n, p, d)

    def cross(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Batched x^T y: (N, P, K), (N, P, D) -> (N, K, D), in row blocks (see `mm`)."""
        n, p, k = x.shape
        d = y.shape[-1]
        b = _row_block(p, k, d)
        if b < 256:
            return np.einsum("npk,npd->nkd", x, y)
        xb, yb = x.reshape(n, p // b, b, k), y.reshape(n, p // b, b, d)
        return (np.swapaxes(xb, 2, 3) @ yb).sum(axis=1)

    def gram(self, x: np.ndarray) -> np.ndarray:
        return self.cross(x, x)

    def rows_all(self, mask: np.ndarray) -> np.ndarray:
        """(N,) True where every entry of row i is True."""
        return mask.reshape(mask.shape[0], -1).all(axis=1)

    def true(self, n: int) -> np.ndarray:
        return np.ones(n, dtype=bool)


class TorchOps:
    """The same operations for torch tensors on one device."""

    name = "torch"
    inf = float("inf")
    chunk = 32  # bounds the float temporaries to ~100 MB at 256 px

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        t = torch
        self.log, self.exp, self.sqrt, self.cos, self.sin = t.log, t.exp, t.sqrt, t.cos, t.sin
        self.arctan2, self.floor, self.isfinite = t.atan2, t.floor, t.isfinite
        self.rint = t.round  # half to even, like numpy.rint

    def _t(self, a: Any, dtype: Any) -> Any:
        return self.torch.as_tensor(a, dtype=dtype, device=self.device)

    def f32(self, a: Any) -> Any:
        return self._t(a, self.torch.float32)

    def f64(self, a: Any) -> Any:
        return self._t(a, self.torch.float64)

    def index(self, a: Any) -> Any:
        return self._t(a, self.torch.long)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.torch.where(cond, a, b)

    def maximum(self, x: Any, y: Any) -> Any:
        if self.torch.is_tensor(y):
            return self.torch.maximum(x, y)
        return self.torch.clamp(x, min=y)

    def minimum(self, x: Any, y: Any) -> Any:
        if self.torch.is_tensor(y):
            return self.torch.minimum(x, y)
        return self.torch.clamp(x, max=y)

    def clip(self, x: Any, lo: Any, hi: Any) -> Any:
        return self.torch.clamp(x, lo, hi)

    def cbrt(self, x: Any) -> Any:
        return self.torch.sign(x) * self.torch.abs(x).pow(1.0 / 3.0)

    def stack(self, seq: list, axis: int) -> Any:
        return self.torch.stack(seq, dim=axis)

    def smallest(self, x: Any, k: int) -> Any:
        if 4 * k > x.shape[-1]:
            return self.torch.sort(x, dim=-1).values[..., :k]
        return self.torch.topk(x, k, dim=-1, largest=False, sorted=True).values  # CPU: ~10x faster

    def take_last(self, x: Any, idx: Any) -> Any:
        return self.torch.gather(x, -1, idx[..., None])[..., 0]

    def sum64(self, x: Any, axis: int) -> Any:
        return x.sum(dim=axis, dtype=self.torch.float64)

    def count(self, mask: Any, axis: int) -> Any:
        return mask.sum(dim=axis)

    def amax(self, x: Any, axis: int) -> Any:
        return self.torch.amax(x, dim=axis)

    def eigh(self, a: Any) -> tuple[Any, Any]:
        return self.torch.linalg.eigh(a)

    def encode_srgb(self, linear: Any) -> Any:
        v = self.torch.clamp(self.torch.nan_to_num(linear, nan=0.0), 0.0, 1.0)
        code = self.index(_CELL_CODE)[(v * _GRID).long()]
        return (code + (v >= self.f32(_NEXT_BOUND)[code])).to(self.torch.uint8)

    def to_uint8(self, x: Any) -> Any:
        return x.to(self.torch.uint8)

    def lut(self, table: Any, x: Any) -> Any:
        return table[x.long()]

    def lut_per_image(self, tables: Any, x: Any) -> Any:
        n = x.shape[0]
        offset = (self.torch.arange(n, device=self.device) * tables.shape[1]).view(
            n, *([1] * (x.ndim - 1)))
        return tables.reshape(-1)[x.long() + offset]

    def histogram(self, x: Any) -> Any:
        n = x.shape[0]
        flat = x.reshape(n, -1).long() + (self.torch.arange(n, device=self.device) * 256)[:, None]
        return self.torch.bincount(flat.reshape(-1), minlength=256 * n).view(n, 256)

    def cumsum(self, x: Any, axis: int) -> Any:
        return self.torch.cumsum(x, dim=axis)

    def mm(self, x: Any, m: Any) -> Any:
        """x (N, P, K) @ m, m (K, D) or (N, K, D). On the CPU, with K <= 3, as K broadcast
        multiply-adds: torch's CPU matmul threads stall like OpenBLAS's (16 ms a call measured
        with another process on the second core), elementwise ops on these sizes do not."""
        if self.device.type != "cpu" or x.shape[-1] > 3:
            return x @ m
        rows = (lambda k: m[k]) if m.ndim == 2 else (lambda k: m[:, None, k, :])
        out = x[..., 0:1] * rows(0)
        for k in range(1, x.shape[-1]):
            out = out + x[..., k:k + 1] * rows(k)
        return out

    def cross(self, x: Any, y: Any) -> Any:
        """Batched x^T y: (N, P, K), (N, P, D) -> (N, K, D); on the CPU as sums (see `mm`)."""
        if self.device.type != "cpu" or x.shape[-1] * y.shape[-1] > 9:
            return x.transpose(1, 2) @ y
        rows = [self.torch.stack([(x[..., i] * y[..., j]).sum(dim=1)
                                  for j in range(y.shape[-1])], dim=-1)
                for i in range(x.shape[-1])]
        return self.torch.stack(rows, dim=-2)

    def gram(self, x: Any) -> Any:
        return self.cross(x, x)

    def rows_all(self, mask: Any) -> Any:
        return mask.reshape(mask.shape[0], -1).all(dim=1)

    def true(self, n: int) -> Any:
        return self.torch.ones(n, dtype=self.torch.bool, device=self.device)


# --- shared algorithms ------------------------------------------------------------------------


def percentile(ops: Any, x: Any, qs: tuple[float, ...], mask: Any = None) -> list[Any]:
    """numpy.percentile(method='linear') along the last axis, over the entries where `mask`.

    Returns one float64 array per q, shaped like x without its last axis. Rows with no entry
    give a non-finite value (the caller marks those images as not ok). Only the order
    statistics needed are selected: q > 50 is read from the top as -percentile(100 - q) of -x.
    """
    size = x.shape[-1]
    if mask is None:
        n = ops.f64(np.full(x.shape[:-1], size))
    else:
        n = ops.f64(ops.count(mask, -1)) * ops.f64(np.ones(x.shape[:-1]))  # mask may broadcast
    last = ops.maximum(n - 1.0, 0.0)
    out = []
    for q in qs:
        mirror = q > 50.0
        q_low = 100.0 - q if mirror else q
        vals = -x if mirror else x
        if mask is not None:
            vals = ops.where(mask, vals, ops.inf)
        k = min(size, int(np.floor(q_low / 100.0 * (size - 1))) + 2)
        s = ops.smallest(vals, k)
        pos = last * (q_low / 100.0)
        lo = ops.floor(pos)
        frac = pos - lo
        a = ops.f64(ops.take_last(s, ops.index(lo)))
        b = ops.f64(ops.take_last(s, ops.index(ops.minimum(lo + 1.0, last))))
        value = ops.where(frac > 0, a + (b - a) * frac, a)
        out.append(-value if mirror else value)
    return out


def standardize_brightness(ops: Any, x: Any) -> tuple[Any, Any]:
    """Slideflow's brightness standardisation: scale so the 90th percentile of all values is 255.

    x is (N, P, 3) uint8; returns the standardised uint8 batch (values floor(v * 255 / p90),
    clipped, as Slideflow's ``clip(I * 255 / p, 0, 255).astype(uint8)``) and an `ok` flag that
    is False for images whose p90 is below BLACK_LEVEL (black tiles).
    """
    m = x.shape[1] * x.shape[2]
    cum = ops.cumsum(ops.histogram(x), 1)
    pos = (m - 1) * 0.9
    lo = int(np.floor(pos))
    frac = pos - lo
    v_lo = ops.f64(ops.count(cum <= lo, 1))
    v_hi = ops.f64(ops.count(cum <= min(lo + 1, m - 1), 1))
    p90 = v_lo + (v_hi - v_lo) * frac
    ok = p90 >= BLACK_LEVEL
    # (v * 255) / p, in that order, as Slideflow: exact numerator, one correctly rounded division
    # (torch turns `255 / p` into a reciprocal times 255, which is off by an ulp at v == p)
    codes = ops.f64(np.arange(256, dtype=np.float64) * 255.0)
    tables = codes[None, :] / ops.where(ok, p90, 255.0)[:, None]
    tables = ops.to_uint8(ops.clip(ops.floor(tables), 0.0, 255.0))
    return ops.lut_per_image(tables, x), ok


def min_tissue(n_pixels: int) -> int:
    return max(MIN_TISSUE_PX, int(np.ceil(MIN_TISSUE_FRACTION * n_pixels)))


def not_black(ops: Any, x: Any) -> Any:
    """(N, P) True where the pixel's brightest channel is at least BLACK_LEVEL."""
    return ops.amax(x, -1) >= BLACK_LEVEL
