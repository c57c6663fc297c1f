"""Colour self-check of GPU JPEG decoders, once per file (and pyramid level) and device.

libjpeg (openslide, libtiff, PIL, simplejpeg) decides how to turn a JPEG's components into RGB
from its markers: JFIF, an Adobe APP14 transform, or component ids 'R','G','B'. A GPU decoder
that reads those differently (e.g. applies a YCbCr transform to raw-RGB scanner tiles) gives
wrong colours on some scanners' files and on nobody else's, silently. So the first time a file
is decoded on a GPU decoder, one of its JPEG tiles is decoded by it and by libjpeg-turbo; when
any value differs by more than `MAX_DIFF` or the PSNR is under `MIN_PSNR` dB, that file is
decoded on the CPU instead, with one warning naming the file and the difference. The verdict is
cached per (file, level, device) for the process and recorded in bag provenance (`record()`).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..imgheader import checked_shape
from .decode import CpuDecoder, make_decoder

log = logging.getLogger("slideflow")

#: largest |GPU - CPU| allowed per value (IDCT rounding differs by 1 between decoders)
MAX_DIFF = 1
#: smallest PSNR (dB) allowed between the GPU and CPU decodes of the check tile
MIN_PSNR = 60.0

_lock = threading.Lock()
_verdicts: dict[tuple[str, Any, str], DecodeCheck] = {}


@dataclass(frozen=True)
class DecodeCheck:
    """The verdict for one file: `ok` False means its tiles are decoded on the CPU."""

    file: str
    device: str
    ok: bool
    max_diff: int | None
    psnr_db: float | None  # None: identical decodes (infinite PSNR) or no decode
    error: str | None = None

    @property
    def used(self) -> str:
        return self.device if self.ok else "cpu"

    def record(self) -> dict[str, Any]:
        """JSON-ready provenance: the decoder asked for, the one used, the measured difference."""
        rec: dict[str, Any] = {"requested": self.device, "used": self.used,
                               "checked_against": "libjpeg-turbo", "max_diff": self.max_diff,
                               "psnr_db": self.psnr_db}
        if self.error:
            rec["error"] = self.error
        return rec

    def describe(self) -> str:
        if self.error:
            return f"cannot decode ({self.error})"
        psnr = "inf" if self.psnr_db is None else f"{self.psnr_db:.1f}"
        return f"max |difference| {self.max_diff}, PSNR {psnr} dB"


def cpu_record() -> dict[str, Any]:
    """Provenance of tiles decoded by libjpeg-turbo on the CPU (nothing to check)."""
    return {"requested": "cpu", "used": "cpu"}


def compare(gpu: np.ndarray, cpu: np.ndarray) -> tuple[int, float | None]:
    """(max |difference|, PSNR in dB or None when identical) of two uint8 images."""
    if gpu.shape != cpu.shape:
        return 255, 0.0
    d = gpu.astype(np.int16) - cpu.astype(np.int16)
    mse = float(np.mean(d.astype(np.float64) ** 2))
    psnr = None if mse == 0 else round(10 * math.log10(255.0 ** 2 / mse), 2)
    return int(np.abs(d).max()), psnr


def check_decoder(stream: bytes, decoder: Any, file: Any, level: Any = None) -> DecodeCheck:
    """The cached verdict for `file` (`level`) on `decoder` (a `TorchDecoder`), checking
    `stream` (one of the file's JPEG tiles, complete) the first time."""
    device = str(decoder.device)
    key = (str(file), level, device)
    with _lock:
        if key in _verdicts:
            return _verdicts[key]
    verdict = _check(stream, decoder, str(file), device)
    with _lock:
        first = key not in _verdicts
        verdict = _verdicts.setdefault(key, verdict)
    if first and not verdict.ok:
        log.warning("%s: the %s JPEG decoder does not match libjpeg-turbo on this file (%s); "
                    "decoding it on the CPU", file, device, verdict.describe())
    return verdict


def _check(stream: bytes, decoder: Any, file: str, device: str) -> DecodeCheck:
    checked_shape(stream, f"{file}: first tile")  # the pixel budget, before either decodes it
    cpu = CpuDecoder().decode(stream)
    try:
        out = decoder.decode_many([stream])[0]
        gpu = out.permute(1, 2, 0).cpu().numpy() if hasattr(out, "permute") else np.asarray(out)
    except Exception as exc:  # noqa: BLE001 - a decoder that fails is a decoder not to use
        return DecodeCheck(file, device, False, None, None, f"{type(exc).__name__}: {exc}")
    diff, psnr = compare(gpu, cpu)
    ok = diff <= MAX_DIFF and (psnr is None or psnr >= MIN_PSNR)
    return DecodeCheck(file, device, ok, diff, psnr)


def wsi_decode_check(wsi: Any, decoder: Any) -> DecodeCheck | None:
    """The verdict for a GPU `decoder` on `wsi`'s file and level; None for CPU decoding or the
    region path (nothing is decoded on the GPU there)."""
    dec, layout = make_decoder(decoder), wsi._stored[0]
    present = np.flatnonzero(layout.counts) if layout is not None else ()
    if dec.kind != "torch" or not len(present):
        return None
    k = int(present[0])
    return check_decoder(layout.stream(layout.read([k])[k]), dec, layout.path,
                         wsi.level_choice.level)


def decoder_record(wsi: Any, decoder: Any = "cpu") -> dict[str, Any]:
    """Provenance of how `wsi.tiles(decoder=...)` decodes its file."""
    check = wsi_decode_check(wsi, decoder)
    if check is not None:
        return check.record()
    dec = make_decoder(decoder)
    return cpu_record() if dec.kind != "torch" else {"requested": str(dec.device),
                                                     "used": "cpu"}


def forget() -> None:
    """Drop every cached verdict (tests; a replaced file under the same name)."""
    with _lock:
        _verdicts.clear()
