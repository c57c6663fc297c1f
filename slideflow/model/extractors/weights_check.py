"""Weights checked strictly before they load: keys and shapes one by one (`load_strict`),
dtype casts that refuse non-finite or out-of-range values (`cast_checked`). Missing or
unexpected keys are errors unless the spec lists them. `weights` re-exports these names.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping

import torch

from ...errors import WeightsError

log = logging.getLogger(__name__)

ALWAYS_OPTIONAL = ("*num_batches_tracked",)  # BatchNorm counters: training-only state


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def check_state_dict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *,
                     expected_missing: Iterable[str] = (),
                     expected_unexpected: Iterable[str] = (), source: str = "") -> dict:
    """The subset of `sd` to load; raises `WeightsError` on any shape or key problem."""
    expected_missing = tuple(expected_missing) + ALWAYS_OPTIONAL
    expected_unexpected = tuple(expected_unexpected)
    target = module.state_dict(keep_vars=True)
    where = f" in {source}" if source else ""
    for name, ref in target.items():  # model order: the first bad tensor is reported
        if name in sd and tuple(sd[name].shape) != tuple(ref.shape):
            raise WeightsError(
                f"tensor {name!r}{where} has shape {tuple(sd[name].shape)} but the architecture "
                f"expects {tuple(ref.shape)}: wrong checkpoint for this extractor, or wrong "
                "model options (size, patch size, registers...)")
    missing = [k for k in target if k not in sd and not _matches(k, expected_missing)]
    if missing:
        raise WeightsError(f"{len(missing)} tensors missing{where}, first {missing[0]!r} "
                           f"(also {missing[1:4]}); the checkpoint does not match this "
                           "architecture")
    unexpected = [k for k in sd if k not in target and not _matches(k, expected_unexpected)]
    if unexpected:
        raise WeightsError(f"{len(unexpected)} unexpected tensors{where}, first "
                           f"{unexpected[0]!r} (also {unexpected[1:4]}); the checkpoint does "
                           "not match this architecture")
    return {k: v for k, v in sd.items() if k in target}


def cast_checked(t: torch.Tensor, dtype: torch.dtype, name: str, source: str = ""
                 ) -> torch.Tensor:
    """`t` as `dtype`, refusing casts that would silently change the model.

    Refused: non-finite floating values (NaN/inf weights give NaN features); integer or bool
    tensors into a floating parameter (quantised weights lose their scale: int8 values are
    not the weights); floats into an integer buffer; and a wider float (float64) whose values
    do not fit the target (overflow to inf, or a relative error beyond the target's epsilon,
    i.e. more than rounding). Narrower floats (fp16/bf16 -> fp32) are exact and allowed.
    """
    where = f" in {source}" if source else ""
    # a NaN/inf value makes the sum NaN/inf: one vectorised pass, no mask (~15x faster than
    # isfinite().all() on ResNet50); only a non-finite sum (a bad value, or an overflow of
    # large finite values) pays for the element-wise check that decides
    if t.dtype.is_floating_point and t.numel() and not bool(torch.isfinite(t.sum())) \
            and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise WeightsError(f"tensor {name!r}{where} holds {bad} non-finite values (NaN/inf); "
                           "the checkpoint is corrupt or was saved after training diverged")
    if t.dtype == dtype:
        return t
    if dtype.is_floating_point:
        if not t.dtype.is_floating_point:
            raise WeightsError(f"tensor {name!r}{where} is {t.dtype} but the model expects "
                               f"{dtype}: a quantised or integer checkpoint cannot be cast "
                               "without its scale; use the floating-point checkpoint")
        out = t.to(dtype)
        if torch.finfo(t.dtype).bits > torch.finfo(dtype).bits and t.numel():
            if not bool(torch.isfinite(out).all()):
                raise WeightsError(f"tensor {name!r}{where}: {t.dtype} values overflow {dtype}")
            err = (out.to(t.dtype) - t).abs()
            tol = torch.finfo(dtype).eps * t.abs() + torch.finfo(dtype).tiny
            if bool((err > tol).any()):
                raise WeightsError(f"tensor {name!r}{where}: {t.dtype} values are not "
                                   f"representable in {dtype} (underflow); refusing a lossy "
                                   "cast")
        return out
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise WeightsError(f"tensor {name!r}{where} is {t.dtype} but the model expects the "
                           f"integer type {dtype}")
    return t  # integer -> integer buffers (e.g. num_batches_tracked): load_state_dict copies


def load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *,
                expected_missing: Iterable[str] = (), expected_unexpected: Iterable[str] = (),
                source: str = "", assign: bool = False) -> list[str]:
    """Check then load `sd` into `module`; returns the (allowed) missing keys."""
    usable = check_state_dict(module, sd, expected_missing=expected_missing,
                              expected_unexpected=expected_unexpected, source=source)
    for name, ref in module.state_dict(keep_vars=True).items():
        if name in usable:
            usable[name] = cast_checked(usable[name], ref.dtype, name, source)
    result = module.load_state_dict(usable, strict=False, assign=assign)
    if result.unexpected_keys:  # cannot happen after check_state_dict; be loud if it does
        raise WeightsError(f"unexpected keys while loading: {result.unexpected_keys[:4]}")
    return list(result.missing_keys)
