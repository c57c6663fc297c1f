"""cuCIM reader (`pip install slideflow[cucim]`); optional, used only when asked for.

cuCIM reads Aperio SVS (JPEG and JPEG 2000), Philips TIFF and generic tiled TIFF pyramids; it
cannot open NDPI, MRXS or DICOM. Its CPU reading needs only the `cucim-cu13` wheel (cupy and
the nvidia libraries it lists are for reading onto a GPU).

Two cuCIM behaviours this class hides:
- outside the image cuCIM fills white on Aperio files but black on generic TIFFs, so every
  read is clipped to the level and padded with white here;
- for level > 0 cuCIM maps a level-0 location to `trunc(float32(x) / float32(downsample))`;
  slideflow's rule is `rint(x / downsample)` (README, "Fractional downsamples"), so the
  level-0 location handed to cuCIM is chosen to land on that level pixel.
"""

from __future__ import annotations

import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

# Importing cucim where libcufile is installed (torch's CUDA wheels bring it) initialises
# cuFile, which writes `cufile.log` into the current directory (on CPU hosts: "unable to load
# libcuda.so.1"). Keep it out of the user's folder unless they chose a log path themselves.
os.environ.setdefault("CUFILE_LOGFILE_PATH", os.path.join(tempfile.gettempdir(), "cufile.log"))

from cucim import CuImage  # noqa: E402 - imported only when backend='cucim' is asked for

from .base import SlideReader, level_pixel, pad_to, positive_float  # noqa: E402

#: TIFF ResolutionUnit names cuCIM reports -> microns per unit
_UNIT_MICRONS = {"centimeter": 10_000.0, "inch": 25_400.0}


class CuCIMReader(SlideReader):
    name = "cucim"

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._img = CuImage(str(path))
        meta = self._img.metadata
        if isinstance(meta, str):  # older cuCIM releases return the JSON text
            import json

            meta = json.loads(meta)
        self._meta: dict[str, Any] = dict(meta)
        res = self._img.resolutions
        self._dims = [(int(w), int(h)) for w, h in res["level_dimensions"]]
        #: cuCIM's own (float32) downsamples: needed to predict where it reads
        self._cu_ds = [np.float32(d) for d in res["level_downsamples"]]

    # -- metadata ---------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self._dims[0]

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._dims)

    @property
    def level_downsamples(self) -> list[float]:
        """openslide's definition (mean of the width and height ratios), so that level choice
        and grids are the same as on the default path."""
        w0, h0 = self._dims[0]
        return [(w0 / w + h0 / h) / 2.0 for w, h in self._dims]

    @cached_property
    def mpp(self) -> float | None:
        """Aperio `MPP`, else the TIFF resolution tags (as openslide reads them), else None.

        The resolution is read as the exact TIFF rational (tifffile): cuCIM reports it as a
        float32, which turns a stored 0.499 into 0.4990000020.
        """
        aperio = positive_float(self._meta.get("aperio", {}).get("MPP"))
        if aperio:
            return aperio
        tiff = self._meta.get("tiff", {})
        per_unit = _UNIT_MICRONS.get(str(tiff.get("resolution_unit", "")).lower())
        xres = positive_float(tiff.get("x_resolution"))
        if not per_unit or not xres:
            return None
        try:
            import tifffile

            with tifffile.TiffFile(self.path) as tf:
                num, den = tf.pages[0].tags["XResolution"].value
            xres = positive_float(num / den) or xres
        except Exception:  # noqa: BLE001 - keep cuCIM's float32 value
            pass
        return per_unit / xres

    @property
    def vendor(self) -> str | None:
        for vendor in ("aperio", "philips"):
            if vendor in self._meta:
                return vendor
        return "generic-tiff" if "tiff" in self._meta else None

    @property
    def objective_power(self) -> float | None:
        return positive_float(self._meta.get("aperio", {}).get("AppMag"))

    @property
    def properties(self) -> dict[str, Any]:
        """Vendor metadata flattened to 'namespace.key' (e.g. 'aperio.MPP'), scalars only."""
        out: dict[str, Any] = {}
        for ns, values in self._meta.items():
            if isinstance(values, dict):
                out.update({f"{ns}.{k}": v for k, v in values.items()
                            if isinstance(v, (str, int, float))})
        return out

    @property
    def associated_images(self) -> dict[str, Any]:
        from PIL import Image

        return {name: Image.fromarray(np.asarray(self._img.associated_image(name))).convert("RGB")
                for name in sorted(self._img.associated_images)}

    # -- pixels -----------------------------------------------------------------------------
    def _cucim_location(self, level: int, lx: int) -> int:
        """A level-0 coordinate that cuCIM maps to level pixel `lx` (see the module doc)."""
        if level == 0:
            return lx
        ds = self._cu_ds[level]
        x = int(np.ceil(lx * float(ds)))
        while int(np.float32(x) / ds) > lx:
            x -= 1
        while int(np.float32(x) / ds) < lx:
            x += 1
        return x

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lw, lh = self._dims[level]
        lx, ly = level_pixel(x, ds), level_pixel(y, ds)
        # the part of the request inside the level; the rest is white
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, lw), min(ly + height, lh)
        out_of_range = x1 <= x0 or y1 <= y0
        if out_of_range:
            return np.full((height, width, 3), 255, np.uint8)
        loc = (self._cucim_location(level, x0), self._cucim_location(level, y0))
        arr = np.asarray(self._img.read_region(loc, (x1 - x0, y1 - y0), level))
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        elif arr.shape[2] == 4:
            rgb = arr[..., :3].copy()
            rgb[arr[..., 3] == 0] = 255
            arr = rgb
        arr = np.ascontiguousarray(arr[..., :3], dtype=np.uint8)
        if (x0, y0) == (lx, ly):
            return pad_to(arr, height, width)
        out = np.full((height, width, 3), 255, np.uint8)
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = arr
        return out

    def close(self) -> None:
        self._img.close()
