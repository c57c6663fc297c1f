"""TFRecord framing and records, byte-compatible with TensorFlow's writer (no TF needed).

    record  = uint64 LE length | uint32 masked crc32c(length bytes) | data | uint32 masked crc32c(data)
    data    = tf.train.Example {image_raw: bytes (JPEG/PNG), slide: bytes (utf-8),
                                loc_x: int64, loc_y: int64}   # tile centre, level-0 px

Checksum errors name the file, the record number and its byte offset (`corrupt_error`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crc32c

from ..errors import TFRecordError
from . import protobuf

SUFFIX = ".tfrecords"
FRAMING = 16  # 8 length + 4 length crc + 4 data crc
HEADER = struct.Struct("<QI")
U32 = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked crc32c: rotate right by 15 bits, add a constant (mod 2**32)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes | bytearray | memoryview) -> bytes:
    """One framed record: length, its masked crc, the data, the data's masked crc."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, U32.pack(masked_crc(length)), data, U32.pack(masked_crc(data))))


def tfrecord_name(path: str | os.PathLike) -> str:
    """Slide name of a TFRecord: its file name without the `.tfrecords` suffix."""
    name = Path(path).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else Path(name).stem


def corrupt_error(path: Any, record: int, offset: int, why: str) -> TFRecordError:
    return TFRecordError(
        f"{path}: record {record} at byte offset {offset}: {why}. The file was left in place; "
        "re-extract tiles for this slide or remove it from the dataset."
    )


def scan_records(path: Path, verify: bool = True) -> Iterator[tuple[int, int, int, bytes]]:
    """(record number, offset, record length, data) in file order, checksums verified."""
    with open(path, "rb", buffering=1 << 20) as fh:
        size = os.fstat(fh.fileno()).st_size
        offset = i = 0
        while True:
            head = fh.read(12)
            if not head:
                return
            if len(head) < 12:
                raise corrupt_error(path, i, offset, f"truncated: {len(head)} of 12 header bytes")
            length, length_crc = HEADER.unpack(head)
            if verify and masked_crc(head[:8]) != length_crc:
                raise corrupt_error(path, i, offset, "length checksum mismatch (corrupt header)")
            if offset + FRAMING + length > size:
                raise corrupt_error(path, i, offset, f"truncated: the record needs "
                               f"{FRAMING + length} bytes, {size - offset} remain")
            data = fh.read(length)
            tail = fh.read(4)
            if len(data) != length or len(tail) != 4:
                raise corrupt_error(path, i, offset, "truncated while reading")
            if verify and masked_crc(data) != U32.unpack(tail)[0]:
                raise corrupt_error(path, i, offset, "data checksum mismatch (corrupt record)")
            yield i, offset, FRAMING + length, data
            offset += FRAMING + length
            i += 1


def parse_example(data: bytes | memoryview, path: Any, i: int, offset: int) -> dict[str, Any]:
    """Example bytes -> {'image_raw': bytes, 'slide': str, 'loc_x': int, 'loc_y': int, ...}.

    Single-valued features become scalars, others stay lists (extra features included).
    """
    try:
        features = protobuf.decode_example(data)
    except protobuf.ProtobufError as e:
        raise corrupt_error(path, i, offset, f"not a tf.train.Example ({e})") from None
    rec: dict[str, Any] = {}
    for key, (_, values) in features.items():
        rec[key] = values[0] if len(values) == 1 else values
    slide = rec.get("slide")
    if isinstance(slide, bytes):
        rec["slide"] = slide.decode("utf-8", errors="replace")
    return rec
