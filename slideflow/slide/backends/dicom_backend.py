"""DICOM VL Whole Slide Microscopy reader (wsidicom): a .dcm file or a folder of instances."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import SlideReader, level_pixel, pad_to


class _LongUidFilter(logging.Filter):
    """Drops pydicom's "value length (N) exceeds the maximum length of 64 allowed for VR UI":
    converters (e.g. the Camelyon DICOM) write over-long UIDs that are harmless for reading,
    and the warning came on every run. Every other pydicom message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("exceeds the maximum length of 64" in msg and "VR UI" in msg)


_FILTER = _LongUidFilter()


def quiet_long_uid_warning() -> None:
    """Install the filter on pydicom's logger (once; idempotent, thread-safe to repeat)."""
    logger = logging.getLogger("pydicom")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


class DicomReader(SlideReader):
    name = "dicom"

    def __init__(self, path: str | Path):
        super().__init__(path)
        from wsidicom import WsiDicom

        quiet_long_uid_warning()

        with warnings.catch_warnings():  # e.g. the ImageType typo 'ORGINAL' of some converters
            warnings.simplefilter("ignore")
            self._wsi = WsiDicom.open(str(path))
        self._levels = list(self._wsi.levels)

    @property
    def dimensions(self) -> tuple[int, int]:
        size = self._wsi.size
        return (int(size.width), int(size.height))

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(int(lv.size.width), int(lv.size.height)) for lv in self._levels]

    @property
    def mpp(self) -> float | None:
        try:
            mpp = float(self._wsi.mpp.width)  # wsidicom reports µm per pixel
        except (AttributeError, TypeError, ValueError):
            return None
        return mpp if mpp > 0 else None

    @property
    def vendor(self) -> str | None:
        return "dicom"

    @property
    def properties(self) -> dict[str, Any]:
        return {"dicom.levels": len(self._levels)}

    @property
    def associated_images(self) -> dict[str, Any]:
        images: dict[str, Any] = {}
        for key, reader in (("label", self._wsi.read_label), ("macro", self._wsi.read_overview)):
            try:
                images[key] = reader().convert("RGB")
            except Exception:  # noqa: BLE001 - absent associated image
                continue
        return images

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = level_pixel(x, ds), level_pixel(y, ds)
        lw, lh = self.level_dimensions[level]
        # wsidicom refuses reads past the image edge: read the inside part, pad with white
        rw, rh = max(0, min(width, lw - lx)), max(0, min(height, lh - ly))
        if rw == 0 or rh == 0:
            return np.full((height, width, 3), 255, np.uint8)
        region = self._wsi.read_region((lx, ly), self._levels[level].level, (rw, rh))
        arr = np.asarray(region.convert("RGB"), dtype=np.uint8)
        return pad_to(arr, height, width)

    def close(self) -> None:
        self._wsi.close()
