"""Pipelined batches through an extractor: host tiles in, features out, the device kept busy.

On CUDA, for each batch:

    host uint8 NHWC --memcpy--> pinned buffer --H2D on a side stream--> device
    (compute stream waits for that copy only) preprocess -> forward -> D2H into pinned features

and nothing waits on the device until a batch's features are handed out, `depth` batches
later. So the copy of batch k+1 overlaps the forward pass of batch k, and the host prepares
batch k+2 meanwhile. Tiles already on the device (the reader's nvJPEG decoder) skip the copy.

On any other device the same code runs with the streams and pinning left out (every CUDA-only
step is a branch on `self._cuda`), which is what CI tests: only the device placement is untested
there. Pinned buffers come from torch's caching host allocator, which records the copies that
use a buffer before it is reused, so no hand-made ring is needed.

This is the model layer's half of the engine: it sees arrays and tensors, never slides.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def as_nchw_uint8(batch: Any) -> torch.Tensor:
    """uint8 tiles (NHWC numpy, NHWC or NCHW tensor; one HWC tile allowed) as an NCHW tensor
    (a view: no pixel is copied)."""
    if isinstance(batch, np.ndarray):
        # any positive strides are fine (no copy); torch cannot view negative ones
        t = torch.from_numpy(np.ascontiguousarray(batch) if min(batch.strides, default=0) < 0
                             else batch)
    elif isinstance(batch, torch.Tensor):
        t = batch
    else:
        raise TypeError(f"expected a numpy array or a tensor, got {type(batch).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 tiles, got {t.dtype}; convert float images with "
                        "(x * 255).round().astype(np.uint8)")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"expected (N, H, W, 3) or (N, 3, H, W) tiles, got {tuple(t.shape)}")
    if t.shape[-1] == 3:
        return t.permute(0, 3, 1, 2)  # NHWC -> NCHW view (channels_last memory)
    if t.shape[1] == 3:
        return t
    raise ValueError(f"no channel axis of size 3 in tiles of shape {tuple(t.shape)}")


class BatchRunner:
    """Feeds batches to `extractor` with `depth` batches in flight; yields features in order.

    `submit(tiles, tag)` launches one batch and returns the batches that finished
    (`[(features float32 (B, D) numpy, tag), ...]`); `drain()` returns the rest. Works with any
    object that has `device`, `preprocess` and `forward_preprocessed`.
    """

    def __init__(self, extractor: Any, depth: int | None = None):
        self.extractor = extractor
        self.device = torch.device(getattr(extractor, "device", "cpu"))
        self._cuda = self.device.type == "cuda"
        # batches in flight: 2 on CUDA, none elsewhere (nothing is asynchronous on the CPU);
        # an explicit depth applies on any device, so CI runs the CUDA hand-out order on CPU
        self.depth = (2 if self._cuda else 0) if depth is None else max(0, int(depth))
        self._copy_stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._pending: deque[tuple[torch.Tensor, Any, Any]] = deque()
        self.num_features = getattr(extractor, "num_features", None)

    # ------------------------------------------------------------------ input
    def _to_device(self, tiles: Any) -> torch.Tensor:
        x = as_nchw_uint8(tiles)
        if x.device == self.device or not self._cuda:
            return x.to(self.device) if x.device != self.device else x
        if x.device.type != "cpu":  # another GPU
            return x.to(self.device, non_blocking=True)
        # NHWC memory into a pinned buffer (one memcpy), H2D on the side stream
        nhwc = x.permute(0, 2, 3, 1)
        pinned = torch.empty(nhwc.shape, dtype=torch.uint8, pin_memory=True)
        pinned.copy_(nhwc)
        with torch.cuda.stream(self._copy_stream):
            dev = pinned.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self._copy_stream)
        dev.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        return dev.permute(0, 3, 1, 2)

    # ------------------------------------------------------------------ run
    def submit(self, tiles: Any, tag: Any = None) -> list[tuple[np.ndarray, Any]]:
        """Launch one batch; returns the batches whose features are ready, oldest first."""
        ext = self.extractor
        x = self._to_device(tiles)
        with torch.inference_mode():
            feats = ext.forward_preprocessed(ext.preprocess(x))
            if feats.dtype != torch.float32:
                feats = feats.float()
        if self.num_features is not None and feats.shape[1] != self.num_features:
            raise RuntimeError(f"{getattr(ext, 'name', 'extractor')} produced "
                               f"{feats.shape[1]} features, expected {self.num_features}")
        if self._cuda:
            out = torch.empty(feats.shape, dtype=torch.float32, pin_memory=True)
            out.copy_(feats, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self._pending.append((out, done, tag))
        else:
            self._pending.append((feats, None, tag))
        ready = []
        while len(self._pending) > self.depth:
            ready.append(self._pop())
        return ready

    def _pop(self) -> tuple[np.ndarray, Any]:
        out, done, tag = self._pending.popleft()
        if done is not None:
            done.synchronize()  # the only wait on the device: at hand-over to the sink
        return out.numpy(), tag

    def drain(self) -> list[tuple[np.ndarray, Any]]:
        """Features of every batch still in flight, oldest first."""
        return [self._pop() for _ in range(len(self._pending))]

    def run(self, batches: Any) -> Iterator[tuple[np.ndarray, Any]]:
        """`(features, tag)` for every `(tiles, tag)` of `batches`, in order."""
        for tiles, tag in batches:
            yield from self.submit(tiles, tag)
        yield from self.drain()
