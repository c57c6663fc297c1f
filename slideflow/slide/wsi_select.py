"""The WSI's tile selection by tissue: the QC image, `qc()`, `filter_tiles()`.

A mixin of `slideflow.slide.wsi.WSI` (one concern per module): it reads the whole slide once
at `qc_mpp` and turns tissue masks into per-grid-tile keep masks; the WSI combines them with
its ROI mask (`WSI._update`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from ..errors import SlideReadError
from . import tissue
from .qc import QCSettings
from .tissue import qc_method_name

_W = TypeVar("_W", bound="TileSelection")


class TileSelection:
    """QC and background filters of a WSI (attributes set by `WSI.__init__`)."""

    mpp: float
    path: Any
    reader: Any
    grid_spec: Any
    qc_settings: QCSettings
    _qc_keep: np.ndarray | None
    _filter_keep: np.ndarray | None
    _filtered: bool
    tile_microns: float
    dimensions: tuple[int, int]

    def _update(self) -> None:  # the WSI's: combine ROI, QC and filter masks
        raise NotImplementedError

    # -- QC image -------------------------------------------------------------------------------
    @cached_property
    def qc_mpp(self) -> float:
        """Resolution of the QC image: QC_MPP, finer if needed for >= 32 px per tile."""
        return max(self.mpp, min(tissue.QC_MPP, self.tile_microns / 32.0))

    @cached_property
    def qc_image(self) -> np.ndarray:
        """RGB image of the whole slide at `qc_mpp` (read once from the best pyramid level)."""
        target_ds = self.qc_mpp / self.mpp
        dsamples = self.reader.level_downsamples
        level = max((i for i, d in enumerate(dsamples) if d <= target_ds * 1.0001), key=lambda i:
                    dsamples[i], default=0)
        w, h = self.dimensions
        out_w, out_h = max(1, int(round(w / target_ds))), max(1, int(round(h / target_ds)))
        try:  # banded: memory bounded by the QC image, not by a single-level slide
            return self.reader.read_level_scaled(level, (out_w, out_h))
        except Exception as exc:
            raise SlideReadError(f"{self.path}: cannot read level {level} for QC: {exc}") from exc

    @property
    def _qc_scale(self) -> float:
        return self.qc_image.shape[1] / self.dimensions[0]

    def tile_fractions(self, pixel_mask: np.ndarray) -> np.ndarray:
        """Per grid tile, the fraction of `pixel_mask` (a QC-image-sized bool mask) that is True."""
        return tissue.tile_fractions(pixel_mask, self.grid_spec, self._qc_scale)

    # -- QC and filters -------------------------------------------------------------------------
    def qc(self: _W, method: Any = "otsu", threshold: float = QCSettings.qc_threshold) -> _W:
        """Keep tiles whose tissue fraction (by `method` on the QC image) is >= `threshold`.

        `method`: 'otsu', 'blur', 'both', a callable (RGB -> bool keep mask) or a list of them;
        None removes QC. Calling again replaces the previous QC.
        """
        if method is None:
            self._qc_keep = None
            self.qc_settings.qc = None
        else:
            keep = tissue.qc_mask(self.qc_image, method)
            self._qc_keep = self.tile_fractions(keep) >= threshold
            self.qc_settings.qc, self.qc_settings.qc_threshold = method, threshold
        self._update()
        return self

    def filter_tiles(
        self: _W,
        whitespace_fraction: float | None = None,
        whitespace_threshold: float = QCSettings.whitespace_threshold,
        grayspace_fraction: float | None = None,
        grayspace_threshold: float = QCSettings.grayspace_threshold,
    ) -> _W:
        """Slideflow-style background filters, evaluated on the QC image (no tile is read).

        A tile is dropped when more than `whitespace_fraction` of its pixels have mean RGB >
        `whitespace_threshold`, or more than `grayspace_fraction` have HSV saturation <
        `grayspace_threshold`. None disables a filter.
        """
        keep = np.ones(self.grid_spec.shape, bool)
        if whitespace_fraction is not None:
            ws = self.tile_fractions(tissue.whitespace_map(self.qc_image, whitespace_threshold))
            keep &= ws <= whitespace_fraction
        if grayspace_fraction is not None:
            gs = self.tile_fractions(tissue.grayspace_map(self.qc_image, grayspace_threshold))
            keep &= gs <= grayspace_fraction
        self._filter_keep = None if whitespace_fraction is None and grayspace_fraction is None \
            else keep
        q = self.qc_settings
        q.whitespace_fraction, q.whitespace_threshold = whitespace_fraction, whitespace_threshold
        q.grayspace_fraction, q.grayspace_threshold = grayspace_fraction, grayspace_threshold
        self._filtered = True
        self._update()
        return self

    @property
    def qc_methods(self) -> list[str]:
        """The QC methods applied, as recorded in outputs (names, mask paths)."""
        q = self.qc_settings
        return [qc_method_name(m) for m in q.qc_methods()] if q.qc else []

