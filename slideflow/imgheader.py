"""Image sizes from JPEG/PNG headers, checked before anything is decoded.

A tile of a few kilobytes can claim 60000 x 60000 pixels in its header (a "decompression
bomb"): decoding it allocates ~11 GB per decode thread. Every decode path reads the header
first (microseconds) and refuses a tile whose pixel count is over the per-tile budget, or whose
size differs from what its container says (a TIFF's tile size, a TFRecord's tile size), so a
hostile or corrupt tile costs an error naming it, never the node's memory or silent wrong
pixels.
"""

from __future__ import annotations

import os
import struct

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: default decoded pixels allowed per tile: 8192 x 8192 (192 MiB as RGB)
DEFAULT_MAX_TILE_PIXELS = 1 << 26


class ImageHeaderError(ValueError):
    """A tile's header claims a size over the budget or other than its container's."""


def max_tile_pixels() -> int:
    """The per-tile pixel budget: SLIDEFLOW_MAX_TILE_PIXELS when set, else 8192 x 8192."""
    value = os.environ.get("SLIDEFLOW_MAX_TILE_PIXELS", "")
    try:
        return max(1, int(value)) if value.strip() else DEFAULT_MAX_TILE_PIXELS
    except ValueError:
        return DEFAULT_MAX_TILE_PIXELS


def header_shape(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(height, width) from a JPEG (SOF) or PNG (IHDR) header; None for other formats and
    JPEG headers libjpeg-turbo cannot parse (the decoders then report them)."""
    head = bytes(memoryview(data)[:8])
    if head.startswith(JPEG_MAGIC):
        import simplejpeg

        try:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
        except ValueError:
            return None  # left to the decoders (Pillow checks the budget from its header)
        return int(h), int(w)
    if head.startswith(PNG_MAGIC):
        if len(data) < 24:
            raise ImageHeaderError(f"PNG of {len(data)} bytes has no IHDR")
        w, h = struct.unpack(">II", bytes(memoryview(data)[16:24]))
        return int(h), int(w)
    return None


def check_pixels(h: int, w: int, where: str = "image") -> None:
    """Refuse a size over the per-tile budget (before any decode allocates it)."""
    budget = max_tile_pixels()
    if h <= 0 or w <= 0 or h * w > budget:
        raise ImageHeaderError(
            f"{where}: header claims {w}x{h} px, outside the per-tile budget of {budget:,} px "
            "(corrupt or hostile tile; raise SLIDEFLOW_MAX_TILE_PIXELS only for genuine tiles "
            "that large)")


def checked_shape(data: bytes | bytearray | memoryview, where: str = "image"
                  ) -> tuple[int, int] | None:
    """`header_shape` checked against the pixel budget."""
    shape = header_shape(data)
    if shape is not None:
        check_pixels(*shape, where=where)
    return shape


def expect_shape(data: bytes | bytearray | memoryview, shape: tuple[int, int],
                 where: str = "image") -> None:
    """Refuse a tile whose header size is not `shape` (height, width), the size its container
    promises; a non-JPEG/PNG stream is left to the decoder."""
    got = checked_shape(data, where)
    if got is not None and got != tuple(shape):
        raise ImageHeaderError(f"{where}: header says {got[1]}x{got[0]} px, the container "
                               f"says {shape[1]}x{shape[0]} (corrupt tile)")
