"""Tissue QC and background-filter settings: one type for the WSI, extraction and features.

`QCSettings` says which background is removed from a slide's tile grid: a tissue QC method on
the QC image (`WSI.qc`) and Slideflow's whitespace/grayspace filters (`WSI.filter_tiles`).
`apply(wsi)` runs both; the `*_record` methods give the JSON forms stored in outputs, so a
resume check compares like with like. Pure data: no slide is opened here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..validate import finite, fraction
from .mask import BinaryMask, is_mask_image
from .tissue import qc_method_name

QC_METHODS = ("otsu", "blur", "both")
FILTER_FIELDS = ("whitespace_fraction", "whitespace_threshold", "grayspace_fraction",
                 "grayspace_threshold")
QC_FIELDS = ("qc", "qc_threshold", *FILTER_FIELDS)


@dataclass
class QCSettings:
    """Tissue QC (`qc`: 'otsu', 'blur', 'both', a callable RGB -> bool mask, a binary mask
    image (path or `BinaryMask`), a list of them, or None) kept at `qc_threshold` tissue fraction, then the whitespace / grayspace filters
    (None fraction = filter off). Defaults are Slideflow's thresholds."""

    qc: Any = None
    qc_threshold: float = 0.4
    whitespace_fraction: float | None = None
    whitespace_threshold: float = 230
    grayspace_fraction: float | None = None
    grayspace_threshold: float = 0.05

    def __post_init__(self) -> None:
        for q in self.qc_methods():
            if q is not None and not callable(q) and q not in QC_METHODS and not (
                    is_mask_image(q) or isinstance(q, BinaryMask)):
                raise InvalidArgumentError(
                    f"qc must be None, 'otsu', 'blur', 'both', a callable, a mask image path "
                    f"(.png/.tif) or a list of them; got {q!r}")
        self.qc_threshold = fraction(self.qc_threshold, "qc_threshold")
        for name in ("whitespace_fraction", "grayspace_fraction"):
            if getattr(self, name) is not None:
                setattr(self, name, fraction(getattr(self, name), name))
        self.whitespace_threshold = finite(self.whitespace_threshold, "whitespace_threshold")
        self.grayspace_threshold = finite(self.grayspace_threshold, "grayspace_threshold")

    def qc_methods(self) -> list[Any]:
        """`qc` as a list (one entry for a single method)."""
        return list(self.qc) if isinstance(self.qc, (list, tuple)) else [self.qc]

    @property
    def filters_on(self) -> bool:
        return self.whitespace_fraction is not None or self.grayspace_fraction is not None

    def apply(self, wsi: Any) -> Any:
        """Run the QC and the filters on `wsi` (a `slideflow.WSI`); returns it."""
        if self.qc:
            wsi.qc(self.qc, threshold=self.qc_threshold)
        if self.filters_on:
            wsi.filter_tiles(self.whitespace_fraction, self.whitespace_threshold,
                             self.grayspace_fraction, self.grayspace_threshold)
        return wsi

    def qc_record(self) -> Any:
        """`qc` for JSON: method names, a list when a list was given."""
        names = [q if q is None else qc_method_name(q) for q in self.qc_methods()]
        return names if isinstance(self.qc, (list, tuple)) else names[0]

    def settings_record(self) -> dict[str, Any]:
        """Every QC field with `qc` as names (the bag request's `selection` form)."""
        d = {k: getattr(self, k) for k in QC_FIELDS}
        d["qc"] = self.qc_record()
        return d

    def request_record(self) -> dict[str, Any]:
        """The TFRecord sidecar's form: thresholds of switched-off steps are None, callables
        are 'callable:<name>' and mask images 'mask:<name>@<digest>' (their content, so an
        edited mask redoes the slide), so a resume only compares settings that changed the
        tiles."""
        labels = [_request_label(q) for q in self.qc_methods()]
        return {
            "qc": labels if isinstance(self.qc, (list, tuple)) else labels[0],
            "qc_threshold": self.qc_threshold if self.qc else None,
            "whitespace_fraction": self.whitespace_fraction,
            "whitespace_threshold": self.whitespace_threshold
            if self.whitespace_fraction is not None else None,
            "grayspace_fraction": self.grayspace_fraction,
            "grayspace_threshold": self.grayspace_threshold
            if self.grayspace_fraction is not None else None,
        }


def _request_label(q: Any) -> Any:
    """One QC entry as the sidecar records it (see `QCSettings.request_record`)."""
    if q is None or (isinstance(q, str) and not is_mask_image(q)):
        return q
    if is_mask_image(q):
        path = Path(q)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        except OSError:  # unreadable: the QC step itself reports it with the path
            digest = "unreadable"
        return f"mask:{path.name}@{digest}"
    if isinstance(q, BinaryMask):
        arr = np.ascontiguousarray(q.array)
        digest = hashlib.sha256(f"{arr.shape}".encode() + np.packbits(arr).tobytes())
        return f"mask:{q.name}@{digest.hexdigest()[:16]}"
    return f"callable:{getattr(q, '__name__', type(q).__name__)}"
