"""Stored-JPEG passthrough: output tiles that ARE stored tiles are written as stored.

When an output tile covers exactly one stored JPEG tile (same pixel size, grid aligned, level
read as-is), decoding it and re-encoding it as JPEG only loses quality and time. Passthrough
writes the stored entropy-coded data unchanged, as a self-contained stream:

    SOI + [Adobe APP14 marker] + [shared JPEGTables] + the stored tile after its SOI

The Adobe marker is added when the stream carries neither a JFIF nor an Adobe marker, with the
colour transform libjpeg itself infers (RGB for component ids 'R','G','B', else YCbCr), so
decoders that do not apply libjpeg's guessing rules (nvJPEG, browsers) yield the same RGB as
openslide. Decoding a passthrough tile with libjpeg-turbo gives exactly the pixels
`openslide.read_region` returns.

Tiles that cannot pass through (past the level's edge, missing in the file, or a stored frame
of another size) are decoded, cut and re-encoded as usual; `PassthroughPlan.why_not` names the
reason when no tile of a slide can pass through (e.g. "grid offset 13 px").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import level_pixel
from .geometry import LevelChoice
from .stored import SOI, StoredLevel

_ADOBE = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00"
#: Adobe APP14 markers telling every decoder how the 3 components are coded
ADOBE_RGB, ADOBE_YCBCR = _ADOBE + b"\x00", _ADOBE + b"\x01"
_SOF = {0xC0, 0xC1, 0xC2}


@dataclass
class JpegHead:
    """What a JPEG stream says before its scan: APP markers seen, frame size, component ids."""

    jfif: bool = False
    adobe: bool = False
    width: int = 0
    height: int = 0
    ids: tuple[int, ...] = ()

    @property
    def rgb(self) -> bool:
        """Without a JFIF or Adobe marker, libjpeg decodes components 'R','G','B' as raw RGB
        and anything else as YCbCr."""
        return self.ids[:3] == (82, 71, 66)


def jpeg_head(stream: bytes) -> JpegHead:
    """Parse the marker segments of `stream` up to its first scan (SOS)."""
    head = JpegHead()
    i = 2 if stream.startswith(SOI) else 0
    while i + 4 <= len(stream) and stream[i] == 0xFF:
        code = stream[i + 1]
        if code == 0xFF:  # fill byte
            i += 1
            continue
        if code in (0xDA, 0xD9):
            break
        length = int.from_bytes(stream[i + 2:i + 4], "big")
        body = stream[i + 4:i + 2 + length]
        if code == 0xE0 and body.startswith(b"JFIF\x00"):
            head.jfif = True
        elif code == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            head.adobe = True
        elif code in _SOF and len(body) >= 6:
            head.height = int.from_bytes(body[1:3], "big")
            head.width = int.from_bytes(body[3:5], "big")
            n = body[5]
            head.ids = tuple(body[6 + 3 * c] for c in range(n) if 6 + 3 * c < len(body))
        i += 2 + length
    return head


def self_contained(stream: bytes, head: JpegHead | None = None) -> bytes:
    """`stream` with an explicit Adobe colour-transform marker where it has none (see module)."""
    head = head or jpeg_head(stream)
    if head.jfif or head.adobe:
        return stream
    return SOI + (ADOBE_RGB if head.rgb else ADOBE_YCBCR) + stream[2:]


@dataclass
class PassthroughPlan:
    """Which output tiles are stored tiles: `keys[i]` is the stored tile's flat index, or -1
    when tile i must be decoded and re-encoded. `why_not` says why none passes through."""

    keys: np.ndarray
    why_not: str | None = None
    fallback_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int((self.keys >= 0).sum())


def plan_passthrough(layout: StoredLevel, choice: LevelChoice, coords: np.ndarray
                     ) -> PassthroughPlan:
    """Map output tiles (level-0 top-left `coords`) onto stored tiles where they coincide."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    none = np.full(len(coords), -1, np.int64)
    if choice.needs_resize:
        return PassthroughPlan(none, f"tiles are resampled ({choice.read_px} -> "
                                     f"{choice.tile_px} px)")
    if (layout.tile_w, layout.tile_h) != (choice.read_px, choice.read_px):
        return PassthroughPlan(none, f"stored tiles are {layout.tile_w}x{layout.tile_h} px, "
                                     f"output tiles {choice.read_px} px")
    lx = level_pixel(coords[:, 0], choice.downsample)
    ly = level_pixel(coords[:, 1], choice.downsample)
    ox, oy = lx % layout.tile_w, ly % layout.tile_h
    aligned = (ox == 0) & (oy == 0)
    inside = (lx + layout.tile_w <= layout.width) & (ly + layout.tile_h <= layout.height)
    key = (ly // layout.tile_h) * layout.cols + lx // layout.tile_w
    ok = aligned & inside
    keys = np.where(ok, key, -1)
    present = np.zeros(len(keys), bool)
    present[ok] = layout.counts[key[ok]] > 0
    reasons = {_offset_reason(ox, oy, aligned): int((~aligned).sum()),
               "past the level's edge": int((aligned & ~inside).sum()),
               "missing in the file": int((ok & ~present).sum())}
    keys[ok & ~present] = -1
    reasons = {k: v for k, v in reasons.items() if v}
    why = None if (keys >= 0).any() or not len(keys) else "; ".join(reasons)
    return PassthroughPlan(keys, why, reasons)


def _offset_reason(ox: np.ndarray, oy: np.ndarray, aligned: np.ndarray) -> str:
    """'grid offset 13 px' for the first output tile off the stored tile grid."""
    bad = np.flatnonzero(~aligned)
    if not len(bad):
        return "aligned"
    i = int(bad[0])
    return f"grid offset {int(ox[i]) or int(oy[i])} px"


class EncodedTiles:
    """A batch of already-encoded tiles for the TFRecord sink: `streams[i]` is JPEG bytes, or
    None where `pixels` (rows in the same order) must still be encoded."""

    def __init__(self, streams: list[bytes | None], pixels: np.ndarray | None):
        self.streams, self.pixels = streams, pixels

    def __len__(self) -> int:
        return len(self.streams)


def passthrough_batches(layout: StoredLevel, plan: PassthroughPlan, coords: np.ndarray,
                        fallback: Iterator[tuple[np.ndarray, np.ndarray]] | None,
                        batch_size: int = 64) -> Iterator[tuple[EncodedTiles, np.ndarray]]:
    """(EncodedTiles, coords) batches in coords order.

    `fallback` yields, in order, the pixels (numpy batches) of the tiles `plan` does not pass
    through (`coords[plan.keys < 0]`), e.g. the threaded reader's `wsi.tiles(coords=...)`.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    rows = _Rows(fallback)
    n = len(coords)
    for a in range(0, n, batch_size):
        z = min(a + batch_size, n)
        keys = plan.keys[a:z]
        raw = layout.read(keys[keys >= 0])
        streams: list[bytes | None] = []
        for k in keys.tolist():
            streams.append(_stream(layout, raw[k]) if k >= 0 else None)
        redo = [i for i, s in enumerate(streams) if s is None]
        pixels = None
        if redo:
            # a stored frame of another size: decoded like the others by the fallback reader
            pixels = rows.take(sum(1 for i in redo if keys[i] < 0))
            if len(pixels) != len(redo):
                pixels = _with_odd_frames(layout, keys, redo, pixels)
        yield EncodedTiles(streams, pixels), coords[a:z].copy()


class _Rows:
    """Pulls rows, in order, from an iterator of (pixels, coords) batches."""

    def __init__(self, it: Iterator[tuple[np.ndarray, np.ndarray]] | None):
        self.it, self.held = it, []

    def take(self, n: int) -> np.ndarray:
        have = sum(len(h) for h in self.held)
        while have < n:
            if self.it is None:
                raise RuntimeError("passthrough: the fallback reader ran out of tiles")
            tiles, _ = next(self.it)
            self.held.append(np.asarray(tiles))
            have += len(tiles)
        out = np.concatenate(self.held) if len(self.held) != 1 else self.held[0]
        self.held = [out[n:]] if have > n else []
        return out[:n]


def _with_odd_frames(layout: StoredLevel, keys: np.ndarray, redo: list[int],
                     planned: np.ndarray) -> np.ndarray:
    """Pixels for `redo`: the planned fallback rows, plus stored frames that turned out not to
    be whole tiles, decoded here (libjpeg-turbo, as the stored-tile reader does)."""
    from .decode import CpuDecoder

    dec, it = CpuDecoder(), iter(planned)
    h, w = layout.tile_h, layout.tile_w
    out = []
    for i in redo:
        if keys[i] < 0:
            out.append(next(it))
            continue
        tile = np.full((h, w, 3), 255, np.uint8)
        img = dec.decode(layout.stream(layout.read([int(keys[i])])[int(keys[i])]))
        tile[:min(h, img.shape[0]), :min(w, img.shape[1])] = img[:h, :w]
        out.append(tile)
    return np.stack(out)


def wsi_passthrough_plan(wsi: Any, coords: np.ndarray | None = None) -> PassthroughPlan:
    """Which of `wsi`'s tiles at `coords` (default: all kept) are stored tiles as they are."""
    coords = wsi.coords if coords is None else coords
    layout, why = wsi._stored
    if layout is None:
        return PassthroughPlan(np.full(len(coords), -1, np.int64),
                               f"tiles are read through the backend ({why})")
    return plan_passthrough(layout, wsi.level_choice, coords)


def wsi_passthrough_tiles(wsi: Any, plan: PassthroughPlan, coords: np.ndarray | None = None,
                          batch_size: int = 64, num_threads: int | None = None
                          ) -> Iterator[tuple[EncodedTiles, np.ndarray]]:
    """`passthrough_batches` for `wsi`: the tiles `plan` does not pass through are read by
    `wsi.tiles()` (threaded reader); read errors name the slide."""
    from ..errors import SlideReadError

    coords = wsi.coords if coords is None else coords
    rest = np.asarray(coords)[plan.keys < 0]
    fallback = wsi.tiles(batch_size, num_threads, coords=rest) if len(rest) else None
    try:
        yield from passthrough_batches(wsi._stored[0], plan, coords, fallback, batch_size)
    except SlideReadError:
        raise
    except Exception as exc:
        raise SlideReadError(f"{wsi.path}: tile read failed: {exc}") from exc
    finally:
        if fallback is not None:
            fallback.close()


def _stream(layout: StoredLevel, data: bytes) -> bytes | None:
    """The passthrough stream of one stored tile, or None when its frame is not a whole tile."""
    stream = layout.stream(data)
    head = jpeg_head(stream)
    if (head.width, head.height) != (layout.tile_w, layout.tile_h) or len(head.ids) != 3:
        return None
    return self_contained(stream, head)
