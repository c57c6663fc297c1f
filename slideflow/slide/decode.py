"""JPEG decoders for stored tiles, and the area resampling that matches cv2.INTER_AREA.

Two decoders share one small interface (`decode_many(streams) -> list`, `decoded` count):

- `CpuDecoder`: libjpeg-turbo through simplejpeg (accurate DCT, fancy upsampling, the same
  settings openslide uses), returns uint8 (H, W, 3) numpy arrays. It releases the GIL, so the
  reader runs it in a thread pool.
- `TorchDecoder(device)`: `torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on CUDA,
  libjpeg-turbo on CPU), returns uint8 (3, H, W) tensors on `device`.

`area_matrix` builds the separable weights of OpenCV's INTER_AREA downscale so the torch path
resamples on the device with the same filter the numpy path gets from cv2.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class CpuDecoder:
    """libjpeg-turbo (simplejpeg) decoder; thread-safe, counts the tiles it decodes."""

    kind = "cpu"
    device = "cpu"

    def __init__(self) -> None:
        import simplejpeg

        self._decode = simplejpeg.decode_jpeg
        self._lock = threading.Lock()
        self.decoded = 0

    def decode(self, stream: bytes) -> np.ndarray:
        """uint8 (H, W, 3) RGB."""
        out = self._decode(stream, colorspace="RGB", fastdct=False, fastupsample=False)
        with self._lock:
            self.decoded += 1
        return out

    def decode_into(self, stream: bytes, buffer: np.ndarray) -> np.ndarray:
        """Decode into `buffer` (uint8 (H, W, 3), reused by the caller: no allocation); returns
        the view holding the image. ValueError when the image is larger than the buffer."""
        out = self._decode(stream, colorspace="RGB", fastdct=False, fastupsample=False,
                           buffer=buffer)
        with self._lock:
            self.decoded += 1
        return out

    def decode_many(self, streams: list[bytes]) -> list[np.ndarray]:
        return [self.decode(s) for s in streams]


class TorchDecoder:
    """torchvision decoder on `device` ('cuda' uses nvJPEG); returns (3, H, W) uint8 tensors."""

    kind = "torch"

    def __init__(self, device: Any = "cuda") -> None:
        import warnings

        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        # torchvision 0.29 marks its codecs deprecated in favour of torchcodec; they still work
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities",
                                category=DeprecationWarning)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("decoder='cuda' needs a CUDA device; use decoder='cpu'")
        self._torch = torch
        self._decode = decode_jpeg
        self._mode = ImageReadMode.RGB
        self._lock = threading.Lock()
        self.decoded = 0

    def decode_many(self, streams: list[bytes]) -> list[Any]:
        if not streams:
            return []
        torch = self._torch
        data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
        out = self._decode(data, mode=self._mode, device=self.device)
        with self._lock:
            self.decoded += len(streams)
        return list(out)


def make_decoder(decoder: Any = "cpu") -> CpuDecoder | TorchDecoder:
    """'cpu' -> CpuDecoder; 'cuda' / 'cuda:N' -> TorchDecoder on that GPU; an instance as is."""
    if isinstance(decoder, (CpuDecoder, TorchDecoder)):
        return decoder
    if decoder in (None, "auto", "cpu"):
        return CpuDecoder()
    if isinstance(decoder, str) and decoder.startswith("cuda"):
        return TorchDecoder(decoder)
    raise ValueError(f"decoder must be 'cpu', 'cuda' or 'cuda:N' (or a decoder object), "
                     f"got {decoder!r}")


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of OpenCV INTER_AREA downscaling along one axis.

    Output pixel i averages the input interval [i * s, (i + 1) * s) with s = n_in / n_out,
    partial pixels weighted by their overlap (cv2's `computeResizeAreaTab`).
    """
    if n_out > n_in:
        raise ValueError("area resampling only downsamples")
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        a, b = i * scale, (i + 1) * scale
        j0, j1 = int(np.floor(a)), min(n_in, int(np.ceil(b)))
        for j in range(j0, j1):
            w[i, j] = min(b, j + 1) - max(a, j)
    return w / scale


def area_resize_torch(x: Any, out_px: int, mats: dict | None = None) -> Any:
    """uint8 (B, H, W, 3) tensor -> uint8 (B, out_px, out_px, 3), INTER_AREA weights, on x's
    device (float32 accumulation, ties rounded up as cv2's integer-scale path does)."""
    import torch

    b, h, w, _ = x.shape
    if h == out_px and w == out_px:
        return x
    mats = {} if mats is None else mats
    key = (h, w, out_px, x.device)
    if key not in mats:
        mats[key] = (torch.from_numpy(area_matrix(h, out_px)).float().to(x.device),
                     torch.from_numpy(area_matrix(w, out_px)).float().to(x.device))
    wy, wx = mats[key]
    f = x.float()
    f = torch.einsum("bhwc,pw->bhpc", f, wx)  # columns first (cv2 sums rows of columns)
    f = torch.einsum("oh,bhpc->bopc", wy, f)
    return f.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
