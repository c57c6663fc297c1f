"""TFRecord tiles decoded by nvJPEG: the engine's GPU source for `extractor('x.tfrecords')`.

Records are parsed on the host (framing + protobuf, cheap) while the previous batch is decoded:
`torchvision.io.decode_jpeg(list, device=...)` decodes a whole batch in one call (nvJPEG's
batched decoder on CUDA) and the tiles stay on the device as uint8 NHWC, so they reach the model
without a host round trip. On CPU the same call runs libjpeg-turbo, which is what CI tests.
PNG records (or anything that is not JPEG) are decoded by the CPU codecs and moved over.

Colour self-check (`slideflow.slide.decode_check`): the TFRecord's first JPEG record is decoded
by the device decoder and by libjpeg-turbo once per file; a file that fails is decoded on the
CPU (and the tiles moved to the device), with one warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..io import imgcodec
from ..io.tfrecord import TFRecord
from ..slide import decode as slide_decode  # TorchDecoder looked up per call (tests swap it)
from ..slide.decode_check import check_decoder, cpu_record


def decode_check(tfrecord: Any, device: Any) -> Any:
    """The colour self-check verdict of the `device` decoder on this TFRecord (None: its first
    record is not JPEG, nothing to check)."""
    for rec in tfrecord:
        raw = rec["image_raw"]
        if imgcodec.sniff(raw) != "jpg":
            return None
        return check_decoder(raw, slide_decode.TorchDecoder(device), tfrecord.path)
    return None


def decoder_record(path: Any, device: Any) -> dict[str, Any]:
    """Provenance of how the TFRecord at `path` is decoded for an extractor on `device` (None:
    the CPU decoders)."""
    check = decode_check(TFRecord(path), device) if device is not None else None
    if check is None:
        return cpu_record() if device is None else {"requested": str(device), "used": "cpu"}
    return check.record()


def _decode(raws: list[bytes], device: Any, cpu: bool = False) -> Any:
    import torch


    shapes = {imgcodec.image_shape(r) for r in raws}  # budget and sizes before any decode
    if len(shapes) > 1:
        raise ValueError(f"tiles of one batch have different sizes {sorted(shapes)} (corrupt "
                         "record); re-extract the tiles")
    if not cpu and all(imgcodec.sniff(r) == "jpg" for r in raws):
        imgs = slide_decode.TorchDecoder(device).decode_many(raws)
        return torch.stack(imgs).permute(0, 2, 3, 1)  # NCHW memory, NHWC view
    tiles = np.stack([imgcodec.decode(r) for r in raws])
    return torch.from_numpy(tiles).to(device)


def nvjpeg_batches(tfrecord: Any, batch_size: int, device: Any, num_threads: int | None = None
                   ) -> Iterator[tuple[Any, np.ndarray]]:
    """(uint8 (B, H, W, 3) tensors on `device`, int64 (B, 2) stored locations) in file order.

    `num_threads` is accepted for signature parity with the CPU source (the decode is one call).
    """
    del num_threads
    check = decode_check(tfrecord, device)
    cpu = check is not None and not check.ok
    raws: list[bytes] = []
    locs: list[tuple[int, int]] = []
    for rec in tfrecord:
        raws.append(rec["image_raw"])
        locs.append((rec["loc_x"], rec["loc_y"]))
        if len(raws) == batch_size:
            yield _decode(raws, device, cpu), np.asarray(locs, np.int64)
            raws, locs = [], []
    if raws:
        yield _decode(raws, device, cpu), np.asarray(locs, np.int64)
