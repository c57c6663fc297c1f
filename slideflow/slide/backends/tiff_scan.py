"""Shrink a single-level tiled TIFF tile by tile, skipping empty tiles.

For QC of a slide with no pyramid, reading level 0 through openslide in bands costs seconds per
band even where the file stores nothing (60k x 60k: ~6 min under load). tifffile hands out the
stored tiles directly, with `None` for empty ones (bytecount 0), so each stored tile is decoded
once and shrunk at once by an integer factor; empty tiles stay background (white, as openslide
shows them). Memory: the shrunk image plus one tile.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def shrink_tiled_tiff(path: Path, size: tuple[int, int], k: int) -> np.ndarray | None:
    """(h // k, w // k, 3) block means of a one-page tiled RGB TIFF, or None when the file is
    not one (pyramids, strips, other photometrics, tiles not a multiple of k: use bands)."""
    try:
        import tifffile

        tif = tifffile.TiffFile(path)
    except Exception:
        return None
    with tif:
        series = tif.series[0] if tif.series else None
        if series is None or len(series.levels) != 1 or len(tif.pages) < 1:
            return None
        page = tif.pages[0]
        w, h = size
        if not (getattr(page, "is_tiled", False) and (page.imagewidth, page.imagelength) == (w, h)
                and page.photometric in (2, 6) and page.samplesperpixel in (3, 4)
                and page.planarconfig == 1 and page.imagedepth == 1
                and page.tilelength % k == 0 and page.tilewidth % k == 0
                and page.dtype == np.uint8):
            return None
        rw, rh = w // k, h // k
        small = np.full((rh, rw, 3), 255, np.uint8)
        for seg, idx, _ in page.segments():
            if seg is None:
                continue
            y, x = idx[2], idx[3]
            tile = np.ascontiguousarray(seg.reshape(seg.shape[-3:])[..., :3])
            th = min(tile.shape[0], (rh * k) - y)
            tw = min(tile.shape[1], (rw * k) - x)
            if th <= 0 or tw <= 0:
                continue
            th, tw = th // k * k, tw // k * k
            if th == 0 or tw == 0:
                continue
            block = cv2.resize(tile[:th, :tw], (tw // k, th // k), interpolation=cv2.INTER_AREA)
            small[y // k:y // k + th // k, x // k:x // k + tw // k] = block
        return small
