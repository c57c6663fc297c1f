"""`mixed_precision='auto'` on the CPU: bf16 where the CPU computes it natively and it agrees.

CPUs with AVX512-BF16 (Zen 4, Cooper Lake) or AMX (Sapphire Rapids and later) run bf16
convolutions and matmuls natively, faster than fp32; on CPUs without them bf16 is emulated and
many times slower. So 'auto' picks bf16 autocast only when /proc/cpuinfo lists one of those
flags AND a one-time check on the extractor itself, a fixed synthetic H&E-like probe batch run
in fp32 and in bf16, gives a cosine similarity of at least `MIN_COSINE` for every tile; fp32
otherwise. The choice and its reason are kept on the extractor (`precision`, `precision_note`)
and recorded in bag provenance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("slideflow")

#: /proc/cpuinfo flags of native bf16 arithmetic
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: smallest per-tile cosine similarity (bf16 vs fp32 features) for 'auto' to keep bf16
MIN_COSINE = 0.998
PROBE_TILES = 8


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return any(f in flags for f in BF16_FLAGS)


def probe_batch(px: int, n: int = PROBE_TILES, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, px, px): smooth random mixtures of haematoxylin, eosin and background
    colours, deterministic for `seed` (a stand-in for tissue that needs no slide)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(n, 3, 12, 12, generator=g)
    weights = torch.nn.functional.interpolate(weights, size=(px, px), mode="bicubic",
                                              align_corners=False).clamp(0, None)
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-6)
    palette = torch.tensor([[72.0, 42, 130], [232, 120, 170], [242, 238, 240]])  # H, E, glass
    rgb = torch.einsum("nkhw,kc->nchw", weights, palette)
    rgb = rgb + torch.randn(rgb.shape, generator=g) * 6  # grain
    return rgb.round().clamp(0, 255).to(torch.uint8)


def bf16_agreement(extractor: Any) -> float:
    """Smallest per-tile cosine similarity between bf16-autocast and fp32 features of the
    probe batch."""
    x = extractor.preprocess(probe_batch(extractor.input_px))
    run = extractor._runner
    with torch.inference_mode():
        x = x.contiguous(memory_format=torch.channels_last if extractor.channels_last
                         else torch.contiguous_format)
        ref = run(x).flatten(1).float()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            low = run(x).flatten(1).float()
    return float(torch.nn.functional.cosine_similarity(ref, low, dim=1).min())


def choose_cpu_precision(extractor: Any, flags: Iterable[str] | None = None
                         ) -> tuple[str, str]:
    """(precision 'bf16' | 'fp32', why) for `extractor` on this CPU under 'auto'."""
    if not native_bf16(flags):
        return "fp32", "auto: the CPU has no native bf16 (AVX512-BF16/AMX)"
    cosine = bf16_agreement(extractor)
    if cosine < MIN_COSINE:
        log.info("%s: bf16 features differ from fp32 (cosine %.4f < %.3f); running fp32",
                 extractor.name, cosine, MIN_COSINE)
        return "fp32", f"auto: bf16 cosine {cosine:.4f} < {MIN_COSINE} against fp32"
    return "bf16", f"auto: native bf16, cosine {cosine:.5f} against fp32"
