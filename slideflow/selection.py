"""Which tiles of a slide are used: one set of options shared by tile extraction and features.

`extract_tiles` and `generate_feature_bags` (from slides) accept the same options and open the
slide the same way, so a TFRecord and a bag made with equal options hold the same tiles. The
QC part is `slideflow.slide.qc.QCSettings`, the type `WSI` itself records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError
from .slide.geometry import DEFAULT_GRID_RULE, check_grid_rule
from .slide.qc import QC_METHODS, QCSettings
from .slide.wsi import WSI
from .validate import finite, positive_int

ROI_METHODS = ("auto", "inside", "outside", "ignore")
#: The QC used when none is given, by tile extraction, bags from slides and the CLI alike (so a
#: folder of bags mixing TFRecords and slides holds tiles chosen one way). `qc=None` turns QC off.
DEFAULT_QC = "otsu"
# The order of the JSON record (`selection_dict`), as written by earlier releases.
_RECORD_ORDER = ("qc", "qc_threshold", "roi_method", "roi_filter_method", "whitespace_fraction",
                 "whitespace_threshold", "grayspace_fraction", "grayspace_threshold",
                 "stride_div", "use_edge_tiles", "grid_rule")


@dataclass
class TileSelection(QCSettings):
    """QC and background filters (`QCSettings`), ROIs, stride, grid rule (`WSI`'s
    `grid_rule`) and the slide reader backend."""

    roi_method: str = "auto"
    roi_filter_method: str | float = "center"
    stride_div: int = 1
    use_edge_tiles: bool = False
    backend: str = "auto"
    grid_rule: str = DEFAULT_GRID_RULE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.roi_method not in ROI_METHODS:
            raise InvalidArgumentError(f"roi_method must be one of {ROI_METHODS}, got "
                                       f"{self.roi_method!r}")
        self.stride_div = positive_int(self.stride_div, "stride_div")
        self.grid_rule = check_grid_rule(self.grid_rule)
        rfm = self.roi_filter_method
        if not (rfm == "center" or (not isinstance(rfm, str) and
                                    0.0 < finite(rfm, "roi_filter_method") <= 1.0)):
            raise InvalidArgumentError(f"roi_filter_method must be 'center' or a fraction in "
                                       f"(0, 1], got {rfm!r}")

    def selection_dict(self) -> dict[str, Any]:
        """The options that decide the tiles, JSON-ready (callables recorded by name)."""
        record = {**self.settings_record(), "roi_method": self.roi_method,
                  "roi_filter_method": self.roi_filter_method, "stride_div": self.stride_div,
                  "use_edge_tiles": self.use_edge_tiles, "grid_rule": self.grid_rule}
        return {k: record[k] for k in _RECORD_ORDER}


def open_wsi(slide_path: str | Path, tile_px: int, tile_um: Any, selection: TileSelection, *,
             mpp: float | None = None, rois: Any = None) -> WSI:
    """Open a slide as a WSI with `selection` applied (QC, ROIs, background filters)."""
    s = selection
    wsi = WSI(slide_path, tile_px, tile_um, s.stride_div, mpp=mpp, backend=s.backend, rois=rois,
              roi_method=s.roi_method, roi_filter_method=s.roi_filter_method,
              use_edge_tiles=s.use_edge_tiles, grid_rule=s.grid_rule)
    try:
        s.apply(wsi)
    except BaseException:
        wsi.close()
        raise
    return wsi


__all__ = ["DEFAULT_QC", "QC_METHODS", "ROI_METHODS", "QCSettings", "TileSelection", "open_wsi"]
