"""The normaliser base class: fit, presets, configs, batching, layouts, skipped tiles.

Methods work on a batch of pixels shaped (N, P, 3) uint8 and return the normalised batch plus a
per-image `ok` flag; the base class puts back, unchanged, every image whose flag is False and
counts it in `skipped`. torch is imported only inside torch code paths.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from ..errors import NormalizerError
from .ops import NumpyOps, TorchOps
from .presets import DEFAULT_PRESET, FIT_PRESETS, preset_fit

log = logging.getLogger(__name__)


def _check_image(image: Any, what: str, batch_ok: bool) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise NormalizerError(f"{what} must be uint8 RGB, got dtype {arr.dtype}")
    if arr.ndim not in ((3, 4) if batch_ok else (3,)) or arr.shape[-1] != 3:
        shapes = "HxWx3 or NxHxWx3" if batch_ok else "HxWx3"
        raise NormalizerError(f"{what} must be {shapes} uint8, got shape {arr.shape}")
    return arr


class Normalizer:
    """A fitted stain normaliser. Build one with `slideflow.norm.autoselect(method)`.

    Subclasses define `fit_spec` (key -> shape, optional keys marked by `optional_keys`),
    `_fit_image(ops, x)` (x is 1xPx3 uint8; returns the fit or raises NormalizerError) and
    `_apply(ops, x, fit)` (x is NxPx3 uint8; returns (uint8 NxPx3, ok bool N)).
    """

    fit_spec: dict[str, tuple[int, ...]] = {}
    optional_keys: frozenset[str] = frozenset()
    positive_keys: frozenset[str] = frozenset()
    param_defaults: dict[str, float] = {}

    def __init__(self, method: str, *, backend: str = "numpy", preset: str | None = None) -> None:
        if backend not in ("numpy", "torch"):
            raise NormalizerError(f"unknown backend {backend!r}: use 'numpy' or 'torch'")
        self.method = method
        self.backend = backend
        self.skipped = 0  # images returned unchanged because they could not be normalised
        self.processed = 0  # images seen by transform / transform_torch
        self._lock = threading.Lock()
        self._warned = False
        self._fit: dict[str, np.ndarray | None] = {}
        self._cache: dict[Any, dict[str, Any]] = {}
        self.fit_preset(preset if preset is not None else DEFAULT_PRESET[method])

    # -- fit ------------------------------------------------------------------------------------

    def fit(self, image: np.ndarray) -> Normalizer:
        """Fit to a target image (uint8 HxWx3). Raises NormalizerError when it cannot."""
        arr = _check_image(image, "fit target", batch_ok=False)
        step = int(np.ceil(max(arr.shape[:2]) / 2048))  # large targets: a strided 2048 px view
        arr = np.ascontiguousarray(arr[::step, ::step])
        with np.errstate(all="ignore"):
            fit = self._fit_image(NumpyOps(), arr.reshape(1, -1, 3))
        self.set_fit(**fit)
        return self

    def fit_preset(self, name: str) -> Normalizer:
        """Fit to a named preset ('v1', 'v2', 'v3' as in Slideflow; see `presets`)."""
        try:
            fit = preset_fit(self.method, name)
        except KeyError:
            names = ", ".join(sorted(FIT_PRESETS.get(self.method, {})))
            raise NormalizerError(
                f"no preset {name!r} for {self.method!r}; available: {names}") from None
        self.set_fit(**fit)
        return self

    def get_fit(self) -> dict[str, Any]:
        """The fit as JSON-ready lists (exact: float64 values round-trip through JSON)."""
        return {k: v.tolist() for k, v in self._fit.items() if v is not None}

    def set_fit(self, **fit: Any) -> Normalizer:
        """Set the fit from arrays or nested lists (keys as returned by `get_fit`)."""
        unknown = set(fit) - set(self.fit_spec)
        missing = set(self.fit_spec) - set(fit) - self.optional_keys
        if unknown or missing:
            raise NormalizerError(
                f"{self.method} fit needs {sorted(self.fit_spec)}"
                + (f"; unknown {sorted(unknown)}" if unknown else "")
                + (f"; missing {sorted(missing)}" if missing else ""))
        new: dict[str, np.ndarray | None] = {}
        for key, shape in self.fit_spec.items():
            value = fit.get(key)
            if value is None:
                new[key] = None
                continue
            try:
                arr = np.array(value, dtype=np.float64).reshape(shape)
            except (TypeError, ValueError) as e:
                raise NormalizerError(
                    f"{self.method} fit {key!r} must have shape {shape}: {e}") from None
            if not np.all(np.isfinite(arr)):
                raise NormalizerError(f"{self.method} fit {key!r} has NaN or inf: {arr.tolist()}")
            if key in self.positive_keys and not np.all(arr > 0):
                raise NormalizerError(f"{self.method} fit {key!r} must be > 0: {arr.tolist()}")
            new[key] = arr
        self._fit = new
        self._cache = {}
        return self

    def params(self) -> dict[str, float]:
        """Constructor parameters that differ from their defaults (e.g. a Reinhard threshold)."""
        return {k: getattr(self, k) for k, default in self.param_defaults.items()
                if getattr(self, k) != default}

    def to_config(self) -> dict[str, Any]:
        """{"method": ..., "fit": ...}: what bags_config.json stores; see `from_config`.

        Non-default constructor parameters are added under "params" (Slideflow reads only
        "method" and "fit").
        """
        cfg: dict[str, Any] = {"method": self.method, "fit": self.get_fit()}
        if self.params():
            cfg["params"] = self.params()
        return cfg

    # -- transform ------------------------------------------------------------------------------

    def transform(self, batch: Any) -> Any:
        """Normalise uint8 HxWx3 or NxHxWx3 numpy images; same shape and dtype back.

        A torch tensor is handed to `transform_torch`. Images that cannot be normalised
        (background, black, flat, too little tissue, degenerate stain estimate) come back
        unchanged and are counted in `skipped`.
        """
        if type(batch).__module__.startswith("torch"):
            return self.transform_torch(batch)
        arr = _check_image(batch, "image", batch_ok=True)
        single = arr.ndim == 3
        x = arr[None] if single else arr
        if self.backend == "torch":
            import torch

            x = np.ascontiguousarray(x)
            x = x if x.flags.writeable else x.copy()  # torch refuses read-only memory
            out = self.transform_torch(torch.from_numpy(x), channels_last=True).numpy()
        else:
            with np.errstate(all="ignore"):  # degenerate tiles are caught by the ok flags
                out = self._run(NumpyOps(), x)
        return out[0] if single else out

    __call__ = transform

    def transform_torch(self, images: Any, *, channels_last: bool | None = None) -> Any:
        """Normalise uint8 torch images, NCHW or NHWC (or CHW / HWC), on their own device.

        The layout comes back as it went in. `channels_last` says which it is when the shape
        cannot (both the channel and the last axis have size 3).
        """
        import torch

        if not torch.is_tensor(images) or images.dtype != torch.uint8:
            raise NormalizerError(
                f"transform_torch needs a uint8 torch tensor, got {type(images).__name__} "
                f"{getattr(images, 'dtype', '')}")
        if images.ndim not in (3, 4):
            raise NormalizerError(f"expected CHW/HWC or NCHW/NHWC, got shape {tuple(images.shape)}")
        single = images.ndim == 3
        t = images[None] if single else images
        if channels_last is None:
            last, first = t.shape[-1] == 3, t.shape[1] == 3
            if last == first:
                raise NormalizerError(
                    f"cannot tell the channel axis of shape {tuple(images.shape)}: "
                    "pass channels_last=True (NHWC) or False (NCHW)")
            channels_last = last
        nhwc = t if channels_last else t.permute(0, 2, 3, 1)
        device = t.device
        if device.type == "mps":  # no float64 there: run on the CPU, hand back on the device
            nhwc = nhwc.cpu()
        with torch.no_grad():
            out = self._run(TorchOps(nhwc.device), nhwc.contiguous()).to(device)
        if not channels_last:
            out = out.permute(0, 3, 1, 2).contiguous()
        return out[0] if single else out

    def _fit_for(self, ops: Any) -> dict[str, Any]:
        key = (ops.name, str(getattr(ops, "device", "")))
        cached = self._cache.get(key)
        if cached is None:
            cached = {k: (None if v is None else ops.f64(v)) for k, v in self._fit.items()}
            self._cache[key] = cached
        return cached

    def _run(self, ops: Any, x: Any) -> Any:
        """x is NxHxWx3 uint8 (array or tensor); same shape back, unfit images as they were."""
        n = x.shape[0]
        if n == 0 or x.shape[1] * x.shape[2] == 0:
            return x.copy() if ops.name == "numpy" else x.clone()
        fit = self._fit_for(ops)
        outs, skipped = [], 0
        for start in range(0, n, ops.chunk):
            chunk = x[start:start + ops.chunk]
            flat = chunk.reshape(chunk.shape[0], -1, 3)
            out, ok = self._apply(ops, flat, fit)
            out = ops.where(ok[:, None, None], out, flat)
            skipped += int(ops.count(~ok, 0))
            outs.append(out.reshape(chunk.shape))
        out = outs[0] if len(outs) == 1 else (
            np.concatenate(outs) if ops.name == "numpy" else ops.torch.cat(outs))
        with self._lock:
            self.processed += n
            self.skipped += skipped
            warn = skipped and not self._warned
            self._warned = self._warned or bool(skipped)
        if skipped:
            log.debug("%s: %d of %d images returned unchanged", self.method, skipped, n)
        if warn:
            log.warning("%s normaliser returned %d image(s) unchanged (background, black, flat "
                        "or too little tissue); see normalizer.skipped", self.method, skipped)
        return out

    def reset_counters(self) -> None:
        with self._lock:
            self.skipped = self.processed = 0

    # -- to implement -----------------------------------------------------------------------------

    def _fit_image(self, ops: Any, x: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _apply(self, ops: Any, x: Any, fit: dict[str, Any]) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        fit = ", ".join(f"{k}={v}" for k, v in self.get_fit().items())
        return f"{type(self).__name__}(method={self.method!r}, backend={self.backend!r}, {fit})"
