"""The stored-tile reader's torch path: decode a batch's new stored tiles with a torch decoder
(nvJPEG on CUDA), cut the output tiles by one gather and area-resample them on that device, so a
CUDA decoder hands tiles to the model without a host round trip.

Decoded stored tiles stay on the device until the last batch that uses them has been cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..imgheader import expect_shape
from .decode import TorchDecoder, area_resize_torch
from .stored_plan import StoredPlan


def iter_torch(reader: StoredPlan, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
    """Yield (uint8 (B, tile_px, tile_px, 3) tensor on the decoder's device, coords)."""
    import torch

    dec: TorchDecoder = reader.decoder  # type: ignore[assignment]
    lay = reader.layout
    n = len(reader.coords)
    white = torch.full((lay.tile_h, lay.tile_w, 3), 255, dtype=torch.uint8, device=dec.device)
    held: dict[int, Any] = {}
    last_use: dict[int, int] = {}
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    keys_of = [reader.batch_keys(a, z) for a, z in bounds]
    for b, ks in enumerate(keys_of):
        for k in ks:
            last_use[k] = b
    mats: dict = {}
    for b, (a, z) in enumerate(bounds):
        new = [k for k in keys_of[b] if k not in held]
        raw = lay.read(new)
        present = [k for k in new if raw[k] is not None]
        streams = [lay.stream(raw[k]) for k in present]
        for k, st in zip(present, streams):  # sizes checked before the batch is decoded
            try:
                expect_shape(st, (lay.tile_h, lay.tile_w), "stored tile")
            except ValueError as exc:
                raise OSError(reader.tile_error(k, exc)) from None
        try:
            decoded = dec.decode_many(streams)
        except Exception as exc:
            raise OSError(f"stored tiles of level {reader.choice.level} cannot be decoded "
                          f"on {dec.device}: {exc}") from exc
        for k in new:
            held[k] = None
        for k, t in zip(present, decoded):
            held[k] = _pad_hwc(t.permute(1, 2, 0), lay.tile_h, lay.tile_w)
        tiles = _gather(reader, a, z, keys_of[b], held, white)
        if reader.choice.needs_resize:
            tiles = area_resize_torch(tiles, reader.choice.tile_px, mats)
        for k in keys_of[b]:
            if last_use[k] == b:
                del held[k]
        yield tiles.contiguous(), reader.coords[a:z].copy()


def _gather(reader: StoredPlan, a: int, z: int, keys: list[int], held: dict[int, Any],
            white: Any) -> Any:
    """uint8 (z - a, read_px, read_px, 3) regions cut from the held tiles by one gather."""
    import torch

    lay, r, dev = reader.layout, reader.choice.read_px, white.device
    stack = torch.stack([held[k] if held[k] is not None else white for k in keys] + [white])
    lut = torch.full((lay.rows * lay.cols,), len(keys), dtype=torch.int64)
    lut[torch.as_tensor(keys, dtype=torch.int64)] = torch.arange(len(keys))
    lut = lut.to(dev)
    step = torch.arange(r, device=dev)
    gx = torch.as_tensor(reader.lx[a:z], device=dev)[:, None] + step  # (B, r)
    gy = torch.as_tensor(reader.ly[a:z], device=dev)[:, None] + step
    col = torch.clamp(gx // lay.tile_w, max=lay.cols - 1)
    row = torch.clamp(gy // lay.tile_h, max=lay.rows - 1)
    idx = lut[row[:, :, None] * lay.cols + col[:, None, :]]  # (B, r, r)
    outside = (gy >= lay.height)[:, :, None] | (gx >= lay.width)[:, None, :]
    idx = torch.where(outside, len(keys), idx)
    iy = (gy % lay.tile_h)[:, :, None].expand_as(idx)
    ix = (gx % lay.tile_w)[:, None, :].expand_as(idx)
    return stack[idx, iy, ix]


def _pad_hwc(t: Any, h: int, w: int) -> Any:
    """A decoded (H, W, 3) tile padded with white to the stored tile size (short edge frames)."""
    if t.shape[0] == h and t.shape[1] == w:
        return t
    import torch

    out = torch.full((h, w, 3), 255, dtype=torch.uint8, device=t.device)
    out[: min(h, t.shape[0]), : min(w, t.shape[1])] = t[:h, :w]
    return out
