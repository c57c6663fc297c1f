"""WSI: a slide reader + tile grid + tissue QC + ROIs, the object users hold."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import MissingMPPError, SlideReadError, UnsupportedSlideError, exception_text
from ..remote.url import slide_path
from ..validate import MPP_RANGE, mpp_value, positive_int
from . import geometry
from .backends import open_reader
from .backends.base import SlideReader
from .decode import CpuDecoder, make_decoder
from .decode_check import wsi_decode_check
from .paths import slide_name
from .preview import draw_preview
from .qc import FILTER_FIELDS, QCSettings
from .reader import TileReader
from .roi import ROI, coerce_rois, roi_keep_mask
from .stored import open_stored_level
from .stored_reader import StoredTileReader
from .wsi_select import TileSelection

#: how tiles are read: stored JPEG tiles decoded by slideflow, or the backend's read_region
TILE_READERS = ("auto", "stored", "region")


class WSI(TileSelection):
    """A whole-slide image seen as a grid of `tile_px` tiles covering `tile_um` microns.

    A new WSI keeps every whole grid tile inside the slide (and inside its ROIs when given);
    `qc()` and `filter_tiles()` remove background only when asked. `grid` is a bool
    (grid_h, grid_w) mask, rows first; `coords` holds the level-0 top-left (x, y) of each kept
    tile in row-major order, and `tiles()` / `read_tile()` follow that order.

    `grid_rule`: 'slideflow3' (default) sizes tiles as Slideflow 3 does (extent
    `int(tile_um / mpp)` level-0 px), so tile centres equal Slideflow 3's; 'round' rounds the
    extent to the nearest pixel, the rule of slideflow before 4.0.

    `tile_px` may be a `TileGeometry` (then no `tile_um`): the geometry is parsed by
    `TileGeometry.parse` either way, so its errors read the same as the CLI's and `Dataset`'s.

    `tile_reader`: 'auto' reads JPEG-tiled TIFF/SVS/DICOM levels through the stored-tile reader
    (each stored tile decoded once by slideflow) and everything else through the backend's
    `read_region`; 'stored' or 'region' force one (for tests and comparisons).
    """

    def __init__(
        self,
        path: str | Path,
        tile_px: int | geometry.TileGeometry,
        tile_um: float | int | str | None = None,
        stride_div: int = 1,
        *,
        mpp: float | None = None,
        backend: str = "auto",
        rois: str | Path | ROI | list[str | Path | ROI] | None = None,
        roi_method: str = "auto",
        roi_filter_method: str | float = "center",
        use_edge_tiles: bool = False,
        level_tolerance: float = geometry.LEVEL_TOLERANCE,
        tile_reader: str = "auto",
        grid_rule: str = geometry.DEFAULT_GRID_RULE,
    ):
        if tile_reader not in TILE_READERS:
            raise ValueError(f"tile_reader must be one of {TILE_READERS}, got {tile_reader!r}")
        self.path = slide_path(path)
        self.tile_reader = tile_reader
        # checked before the file is opened: a bad argument is the caller's error, not the slide's
        self.geometry = geometry.TileGeometry.parse(tile_px, tile_um)
        self.tile_px, self.tile_um = self.geometry.tile_px, self.geometry.tile_um
        self.stride_div = self.geometry.check_stride(stride_div)
        self.grid_rule = geometry.check_grid_rule(grid_rule)
        if mpp is not None:
            mpp = mpp_value(mpp, "mpp")
        self.reader: SlideReader = open_reader(self.path, backend)
        self.reader.check_channels()
        self.mpp_source = "override" if mpp else "file"
        self.mpp = float(mpp) if mpp else self.reader.mpp
        if self.mpp and mpp is None and not MPP_RANGE[0] <= self.mpp <= MPP_RANGE[1]:
            self.close()
            raise MissingMPPError(
                f"{self.path}: the file records {self.mpp:g} microns per pixel, outside "
                f"{MPP_RANGE[0]:g}..{MPP_RANGE[1]:g} (corrupt metadata); pass the real value "
                "(mpp=, --mpp, --mpp-csv or an 'mpp' annotation column)")
        if not self.mpp:
            why = getattr(self.reader, "mpp_note", None) or "the file records no microns-per-pixel"
            raise MissingMPPError(
                f"{self.path}: {why}. Give the resolution: --mpp 0.5 or --mpp-csv on the "
                f"command line, mpp=0.5 in Python (sf.WSI, SlideJob, PreprocessingConfig), or "
                f"an 'mpp' column in the project annotations (spacing_at_level_0 in a manifest)."
            )
        try:
            self.grid_spec = geometry.make_grid(
                self.dimensions, self.mpp, self.tile_px, self.tile_um, self.stride_div, use_edge_tiles,
                self.grid_rule)
            self.level_choice = geometry.choose_level(
                self.reader.level_downsamples, self.grid_spec.extent, self.tile_px, level_tolerance
            )
        except ValueError as exc:
            raise SlideReadError(f"{self.path}: {exc}") from exc
        self.rois: list[ROI] = coerce_rois(rois)
        for roi in self.rois:  # mask images: check they fit the slide now, naming the file
            if hasattr(roi, "scales"):
                roi.scales(self.dimensions)
        self.roi_method = self._resolve_roi_method(roi_method)
        self.roi_filter_method = roi_filter_method
        self._base_mask = self._roi_mask()
        self._qc_keep: np.ndarray | None = None
        self._filter_keep: np.ndarray | None = None
        self.qc_settings = QCSettings()  # what qc() and filter_tiles() last applied
        self._filtered = False
        self._update()
        if tile_reader == "stored":
            self._stored  # noqa: B018 - fail now, naming why, rather than at the first read

    # -- identity and metadata ----------------------------------------------------------------
    @property
    def name(self) -> str:
        """Slide name: the file stem (the folder name for DICOM folders)."""
        return slide_name(self.path)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.reader.dimensions

    @property
    def levels(self) -> list[dict[str, Any]]:
        """One dict per pyramid level: dimensions, downsample, mpp."""
        return [
            {"dimensions": dims, "downsample": ds, "mpp": self.mpp * ds}
            for dims, ds in zip(self.reader.level_dimensions, self.reader.level_downsamples)
        ]

    @property
    def fetch_stats(self) -> dict[str, int] | None:
        """{requests, bytes_fetched, retries} for a slide read from a URL, else None."""
        stats = getattr(self.reader, "fetch_stats", None)
        return stats.as_dict() if stats is not None else None

    @property
    def vendor(self) -> str | None:
        return self.reader.vendor

    @property
    def backend(self) -> str:
        return self.reader.name

    @property
    def properties(self) -> dict[str, Any]:
        return self.reader.properties

    @property
    def associated_images(self) -> dict[str, Any]:
        return self.reader.associated_images

    @property
    def full_extract_px(self) -> int:
        """Tile side in level-0 pixels."""
        return self.grid_spec.extent

    @property
    def stride_px(self) -> int:
        return self.grid_spec.stride

    @property
    def tile_microns(self) -> float:
        return self.geometry.microns

    @property
    def grid(self) -> np.ndarray:
        """Bool (grid_h, grid_w): True where a tile is kept."""
        return self._grid

    @property
    def coords(self) -> np.ndarray:
        """N x 2 int64 level-0 top-left (x, y) of the kept tiles, row-major."""
        return self._coords

    @property
    def grid_indices(self) -> np.ndarray:
        """N x 2 (row, col) grid cell of each kept tile."""
        return np.argwhere(self._grid)

    def __len__(self) -> int:
        return len(self._coords)

    def __repr__(self) -> str:
        return (
            f"WSI({self.name!r}, {self.dimensions[0]}x{self.dimensions[1]} px, mpp={self.mpp:.4g},"
            f" tile_px={self.tile_px}, tile_um={self.tile_um!r}, tiles={len(self)}/"
            f"{self._grid.size}, backend={self.backend!r})"
        )

    # -- masks ----------------------------------------------------------------------------------
    def _resolve_roi_method(self, method: str) -> str:
        if method == "auto":
            return "inside" if self.rois else "ignore"
        if method not in ("inside", "outside", "ignore"):
            raise ValueError(f"roi_method must be auto/inside/outside/ignore, got {method!r}")
        return method

    def _roi_mask(self) -> np.ndarray:
        shape = self.grid_spec.shape
        if self.roi_method == "ignore":
            return np.ones(shape, bool)
        return roi_keep_mask(self.rois, self.grid_spec, self.roi_method, self.roi_filter_method)

    def _update(self) -> None:
        mask = self._base_mask.copy()
        for extra in (self._qc_keep, self._filter_keep):
            if extra is not None:
                mask &= extra
        self._grid = mask
        self._coords = self.grid_spec.coords_of(mask)

    def settings(self) -> dict[str, Any]:
        """Everything that decides which tiles are read and how (for resume checks)."""
        q = self.qc_settings
        return {
            "tile_px": self.tile_px,
            "tile_um": self.tile_um,
            "stride_div": self.stride_div,
            "mpp": self.mpp,
            "full_extract_px": self.full_extract_px,
            "level": self.level_choice.level,
            "read_px": self.level_choice.read_px,
            "use_edge_tiles": self.grid_spec.use_edge_tiles,
            "roi_method": self.roi_method,
            "roi_filter_method": self.roi_filter_method,
            "num_rois": len(self.rois),
            "qc": self.qc_methods,
            "qc_threshold": q.qc_threshold if q.qc else None,
            **({k: getattr(q, k) for k in FILTER_FIELDS} if self._filtered else {}),
        }

    # -- pixels ---------------------------------------------------------------------------------
    @cached_property
    def _stored(self):
        """(StoredLevel or None, reason) for the level tiles are read from."""
        if self.tile_reader == "region":
            return None, "tile_reader='region'"

        layout, why = open_stored_level(self.reader, self.level_choice.level)
        if layout is None and self.tile_reader == "stored":
            raise UnsupportedSlideError(
                f"{self.path}: cannot read stored tiles ({why}); use tile_reader='auto' or "
                "'region' to read through the backend")
        return layout, why

    @property
    def read_path(self) -> str:
        """'stored' when tiles are decoded from the stored JPEG tiles, else 'region'."""
        return "stored" if self._stored[0] is not None else "region"

    def _tile_reader(self, coords: np.ndarray | None = None, decoder: Any = "cpu"):
        coords = self._coords if coords is None else coords
        layout = self._stored[0]
        if layout is not None:
            return StoredTileReader(layout, coords, self.level_choice, decoder)
        return TileReader(self.reader, coords, self.full_extract_px, self.stride_px,
                          self.level_choice)

    def read_tile(self, i: int) -> np.ndarray:
        """uint8 (tile_px, tile_px, 3) of the i-th kept tile."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.name}: tile {i} out of range (0..{n - 1})")
        try:
            return self._tile_reader().read_indices([i % n])[0]
        except Exception as exc:
            raise self._read_error(exc) from exc

    def tiles(self, batch_size: int = 64, num_threads: int | None = None,
              coords: np.ndarray | None = None, decoder: Any = "cpu"
              ) -> Iterator[tuple[Any, np.ndarray]]:
        """Yield (uint8 (B, tile_px, tile_px, 3) tiles, int64 (B, 2) top-left coords) in coords
        order.

        `decoder='cpu'` (default): tiles are numpy arrays. `decoder='cuda'` (or 'cuda:N', or a
        `slideflow.slide.decode.TorchDecoder`): tiles are torch uint8 tensors on that device,
        decoded and resampled there on the stored-tile path (uploaded once on the region path).
        `num_threads` defaults to the usable cores.
        """
        batch_size = positive_int(batch_size, "batch_size")

        dec = make_decoder(decoder)
        check = wsi_decode_check(self, dec)  # a GPU decoder that fails it: CPU decode
        use = dec if check is None or check.ok else CpuDecoder()
        reader = self._tile_reader(coords, use)
        it = reader.iter_batches(batch_size=batch_size, num_threads=num_threads)
        if dec.kind == "torch" and (isinstance(reader, TileReader) or use is not dec):
            it = _to_device(it, dec.device)
        try:
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except Exception as exc:
                    raise self._read_error(exc) from exc
                yield batch
        finally:
            it.close()

    def _read_error(self, exc: Exception) -> SlideReadError:
        return SlideReadError(f"{self.path}: tile read failed: {exception_text(exc)}")

    # -- pictures -------------------------------------------------------------------------------
    def thumbnail(self, width: int = 1024):
        """PIL RGB thumbnail `width` pixels wide."""
        from PIL import Image

        img = self.qc_image
        h = max(1, int(round(img.shape[0] * width / img.shape[1])))
        interp = cv2.INTER_AREA if width < img.shape[1] else cv2.INTER_LINEAR
        return Image.fromarray(cv2.resize(img, (width, h), interpolation=interp))

    def preview(self, width: int = 1024, **kwargs: Any):
        """Thumbnail with the QC mask, ROIs and the kept tiles drawn on it (PIL image)."""
        return draw_preview(self, width=width, **kwargs)

    def close(self) -> None:
        layout = self.__dict__.get("_stored", (None, ""))[0]
        if layout is not None:
            layout.close()
        self.reader.close()

    def __enter__(self) -> WSI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_device(it: Iterator[tuple[np.ndarray, np.ndarray]], device: Any
               ) -> Iterator[tuple[Any, np.ndarray]]:
    """Region-path batches uploaded to `device` (keeps the decoder='cuda' contract)."""
    import torch

    try:
        for tiles, coords in it:
            yield torch.from_numpy(tiles).to(device), coords
    finally:
        it.close()
