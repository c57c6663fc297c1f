"""Which tiles of a slide are used: one set of options shared by tile extraction and features.

`extract_tiles` and `generate_feature_bags` (from slides) accept the same options and open the
slide the same way, so a TFRecord and a bag made with equal options hold the same tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError
from .validate import finite, fraction, positive_int

QC_METHODS = ("otsu", "blur", "both")
ROI_METHODS = ("auto", "inside", "outside", "ignore")


@dataclass
class TileSelection:
    """QC, ROI and background-filter options (see `WSI.qc`, `WSI.filter_tiles`)."""

    qc: Any = None
    qc_threshold: float = 0.4
    roi_method: str = "auto"
    roi_filter_method: str | float = "center"
    whitespace_fraction: float | None = None
    whitespace_threshold: float = 230
    grayspace_fraction: float | None = None
    grayspace_threshold: float = 0.05
    stride_div: int = 1
    use_edge_tiles: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        qcs = self.qc if isinstance(self.qc, (list, tuple)) else [self.qc]
        from .slide.mask import BinaryMask, is_mask_image

        for q in qcs:
            if q is not None and not callable(q) and q not in QC_METHODS and not (
                    is_mask_image(q) or isinstance(q, BinaryMask)):
                raise InvalidArgumentError(
                    f"qc must be None, 'otsu', 'blur', 'both', a callable, a mask image path "
                    f"(.png/.tif) or a list of them; got {q!r}")
        if self.roi_method not in ROI_METHODS:
            raise InvalidArgumentError(f"roi_method must be one of {ROI_METHODS}, got "
                                       f"{self.roi_method!r}")
        self.qc_threshold = fraction(self.qc_threshold, "qc_threshold")
        self.stride_div = positive_int(self.stride_div, "stride_div")
        for name in ("whitespace_fraction", "grayspace_fraction"):
            if getattr(self, name) is not None:
                setattr(self, name, fraction(getattr(self, name), name))
        self.whitespace_threshold = finite(self.whitespace_threshold, "whitespace_threshold")
        self.grayspace_threshold = finite(self.grayspace_threshold, "grayspace_threshold")
        rfm = self.roi_filter_method
        if not (rfm == "center" or (not isinstance(rfm, str) and
                                    0.0 < finite(rfm, "roi_filter_method") <= 1.0)):
            raise InvalidArgumentError(f"roi_filter_method must be 'center' or a fraction in "
                                       f"(0, 1], got {rfm!r}")

    def selection_dict(self) -> dict[str, Any]:
        """The options that decide the tiles, JSON-ready (callables recorded by name)."""
        d = {k: getattr(self, k) for k in TileSelection.__dataclass_fields__ if k != "backend"}
        qcs = d["qc"] if isinstance(d["qc"], (list, tuple)) else [d["qc"]]
        from .slide.tissue import qc_method_name

        names = [q if q is None else qc_method_name(q) for q in qcs]
        d["qc"] = names if isinstance(d["qc"], (list, tuple)) else names[0]
        return d


def open_wsi(slide_path: str | Path, tile_px: int, tile_um: Any, selection: TileSelection, *,
             mpp: float | None = None, rois: Any = None):
    """Open a slide as a WSI with `selection` applied (QC, ROIs, background filters)."""
    from .slide.wsi import WSI

    s = selection
    wsi = WSI(slide_path, tile_px, tile_um, s.stride_div, mpp=mpp, backend=s.backend, rois=rois,
              roi_method=s.roi_method, roi_filter_method=s.roi_filter_method,
              use_edge_tiles=s.use_edge_tiles)
    try:
        if s.qc:
            wsi.qc(s.qc, threshold=s.qc_threshold)
        if s.whitespace_fraction is not None or s.grayspace_fraction is not None:
            wsi.filter_tiles(s.whitespace_fraction, s.whitespace_threshold,
                             s.grayspace_fraction, s.grayspace_threshold)
    except BaseException:
        wsi.close()
        raise
    return wsi
