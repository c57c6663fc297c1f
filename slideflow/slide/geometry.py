"""Pure geometry: microns, magnifications, pyramid level choice and the tile grid.

No I/O here, so every rule can be tested with plain numbers. Coordinates are int64 top-left
corners in level-0 pixels; conversion to tile centres happens only at the TFRecord/bag boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..units import parse_magnification
from ..validate import positive_float, positive_int

#: relative tolerance within which a pyramid level is read as-is (no resampling)
LEVEL_TOLERANCE = 0.05

#: how microns become a level-0 tile extent: 'slideflow3' truncates (`int(tile_um / mpp)`, as
#: Slideflow 3 does, so tile centres match it); 'round' rounds to the nearest pixel (the rule
#: of slideflow before 4.0, kept for outputs made with it)
GRID_RULES = ("slideflow3", "round")
DEFAULT_GRID_RULE = "slideflow3"


def check_grid_rule(rule: Any) -> str:
    """`rule` if it is one of `GRID_RULES`; else InvalidArgumentError naming the choices."""
    if rule not in GRID_RULES:
        raise InvalidArgumentError(f"grid_rule must be one of {GRID_RULES}, got {rule!r}")
    return str(rule)


def tile_extent(microns: float, mpp: float, rule: str = DEFAULT_GRID_RULE) -> int:
    """Tile side in level-0 px for `microns` at `mpp` under grid `rule` (see `GRID_RULES`)."""
    ratio = microns / mpp
    return int(ratio) if check_grid_rule(rule) == "slideflow3" else int(round(ratio))


def magnification_to_mpp(mag: float) -> float:
    """The usual convention: 10x objective = 1 µm/px, so 20x = 0.5 µm/px."""
    if mag <= 0:
        raise ValueError(f"magnification must be positive, got {mag}")
    return 10.0 / mag


def tile_um_to_microns(tile_px: int, tile_um: float | int | str) -> float:
    """Tile width in microns from `tile_um` (microns, or a magnification string like '20x')."""
    if isinstance(tile_um, str):
        mag = parse_magnification(tile_um)
        if mag is None:
            try:
                tile_um = float(tile_um)
            except ValueError:
                raise ValueError(
                    f"tile_um={tile_um!r}: give microns (e.g. 256) or a magnification "
                    "string like '20x', '10x' or '2.5x'"
                ) from None
        else:
            return tile_px * magnification_to_mpp(mag)
    if not tile_um or not tile_um > 0 or not math.isfinite(tile_um):
        raise ValueError(f"tile_um must be a finite number > 0, got {tile_um!r}")
    return float(tile_um)


@dataclass(frozen=True)
class TileGeometry:
    """A tile's size, parsed and validated once where it enters (API, CLI, configs) and handed
    down as it is: `tile_px` output pixels covering `tile_um` microns (a number) or a
    magnification ('20x'). `microns` is the width in microns either way."""

    tile_px: int
    tile_um: float | int | str

    @classmethod
    def parse(cls, tile_px: Any, tile_um: Any = None) -> TileGeometry:
        """A checked geometry; `tile_px` may already be one (returned as it is). Raises
        `InvalidArgumentError` (a ValueError) naming the bad value."""
        if isinstance(tile_px, TileGeometry):
            if tile_um is not None:
                raise InvalidArgumentError(f"tile_um={tile_um!r} given with a TileGeometry "
                                           f"({tile_px}); give one or the other")
            return tile_px
        px = positive_int(tile_px, "tile_px")
        if isinstance(tile_um, str):
            try:
                microns = tile_um_to_microns(px, tile_um)
            except ValueError as exc:  # named once: some of its messages name tile_um already
                why = str(exc)
                raise InvalidArgumentError(why if why.startswith("tile_um") else
                                           f"tile_um={tile_um!r}: {why}") from None
            positive_float(microns, f"tile_um={tile_um!r} (in microns)")
        else:
            positive_float(tile_um, "tile_um")
            if isinstance(tile_um, np.generic):
                tile_um = tile_um.item()
        return cls(px, tile_um)

    @classmethod
    def from_text(cls, tile_px: Any, tile_um: str) -> TileGeometry:
        """From command-line text: '112' is 112.0 microns, '20x' a magnification."""
        if isinstance(tile_um, str) and parse_magnification(tile_um) is None:
            try:
                return cls.parse(tile_px, float(tile_um))
            except ValueError:
                pass  # parse names the bad value
        return cls.parse(tile_px, tile_um)

    @property
    def microns(self) -> float:
        return tile_um_to_microns(self.tile_px, self.tile_um)

    def check_stride(self, stride_div: Any) -> int:
        """`stride_div` if tiles step by at least one output pixel (tile_px / stride_div)."""
        div = positive_int(stride_div, "stride_div")
        if div > self.tile_px:  # a step under one output pixel only re-reads the same pixels
            raise InvalidArgumentError(f"stride_div={div} is larger than tile_px="
                                       f"{self.tile_px}: tiles would step by less than one "
                                       "pixel; use at most tile_px")
        return div


def check_tile_geometry(tile_px: Any, tile_um: Any, stride_div: Any = 1
                        ) -> tuple[int, float | int | str, int]:
    """(tile_px, tile_um, stride_div) checked once where they enter (see `TileGeometry`)."""
    geo = TileGeometry.parse(tile_px, tile_um)
    return geo.tile_px, geo.tile_um, geo.check_stride(stride_div)


@dataclass(frozen=True)
class LevelChoice:
    """How to read a tile: from `level`, `read_px` level pixels wide, resized to `tile_px`."""

    level: int
    downsample: float
    read_px: int
    tile_px: int

    @property
    def needs_resize(self) -> bool:
        return self.read_px != self.tile_px


def choose_level(
    downsamples: list[float] | tuple[float, ...],
    full_extract_px: float,
    tile_px: int,
    tolerance: float = LEVEL_TOLERANCE,
) -> LevelChoice:
    """Tolerance rule: a level within `tolerance` of the target scale is read as-is; otherwise
    read the nearest finer level and downsample. Upsampling is never chosen silently."""
    target = full_extract_px / tile_px  # level-0 px per output px
    candidates = sorted(enumerate(downsamples), key=lambda kv: kv[1])
    # 1) a level close enough to read without any resampling (prefer the closest)
    close = [(abs(d - target) / target, i, d) for i, d in candidates]
    close = [c for c in close if c[0] <= tolerance]
    if close:
        _, i, d = min(close)
        return LevelChoice(level=i, downsample=d, read_px=tile_px, tile_px=tile_px)
    # 2) the coarsest level that is still finer than the target, then downsample
    finer = [(i, d) for i, d in candidates if d <= target]
    if not finer:
        raise ValueError(
            f"tiles of {full_extract_px:.1f} level-0 px into {tile_px} px would need upsampling "
            f"(scale {target:.3f} < 1); use a larger tile_um or a smaller tile_px"
        )
    i, d = finer[-1]
    read_px = int(round(full_extract_px / d))
    return LevelChoice(level=i, downsample=d, read_px=read_px, tile_px=tile_px)


@dataclass(frozen=True)
class TileGrid:
    """Regular grid of tiles over the level-0 plane.

    `extent` is the tile side in level-0 px, `stride` the step between tile origins.
    Only whole tiles are kept unless `use_edge_tiles` (then edge tiles overhang the slide
    and the reader pads them with white). Origins start at 0. With edge tiles, the 'slideflow3'
    rule places origins at every stride up to and including the slide's edge (Slideflow 3's
    `arange(0, W + 1, stride)`); the 'round' rule stops at the last origin inside the slide.
    """

    width: int
    height: int
    extent: int
    stride: int
    use_edge_tiles: bool = False
    rule: str = DEFAULT_GRID_RULE

    @property
    def shape(self) -> tuple[int, int]:
        """(grid_h, grid_w): rows then columns, like an image."""
        return (self._count(self.height), self._count(self.width))

    def _count(self, length: int) -> int:
        if self.use_edge_tiles:
            if self.rule == "slideflow3":
                return length // self.stride + 1
            return max(0, math.ceil(length / self.stride))
        if length < self.extent:
            return 0
        return (length - self.extent) // self.stride + 1

    def origins(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 x origins of columns and y origins of rows (int64)."""
        gh, gw = self.shape
        xs = np.arange(gw, dtype=np.int64) * self.stride
        ys = np.arange(gh, dtype=np.int64) * self.stride
        return xs, ys

    def coords_of(self, mask: np.ndarray) -> np.ndarray:
        """N x 2 (x, y) top-left coordinates of the True cells, row-major."""
        rows, cols = np.nonzero(mask)
        xs, ys = self.origins()
        return np.stack([xs[cols], ys[rows]], axis=1).astype(np.int64)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 centres of columns and rows (float64)."""
        xs, ys = self.origins()
        half = self.extent / 2.0
        return xs + half, ys + half


def make_grid(
    dimensions: tuple[int, int],
    mpp: float,
    tile_px: int,
    tile_um: float | int | str,
    stride_div: int = 1,
    use_edge_tiles: bool = False,
    rule: str = DEFAULT_GRID_RULE,
) -> TileGrid:
    """Tile grid for a slide of level-0 `dimensions` (W, H) at `mpp` µm/px.

    The extent follows `rule` (`GRID_RULES`); the stride is `round(extent / stride_div)` under
    both rules, as in Slideflow 3.
    """
    tile_px, tile_um, stride_div = check_tile_geometry(tile_px, tile_um, stride_div)
    mpp = positive_float(mpp, "mpp")
    microns = tile_um_to_microns(tile_px, tile_um)
    extent = tile_extent(microns, mpp, rule)
    if extent < 1:
        raise ValueError(f"tile_um={tile_um!r} is smaller than one pixel at {mpp} µm/px")
    stride = max(1, int(round(extent / stride_div)))
    return TileGrid(dimensions[0], dimensions[1], extent, stride, use_edge_tiles, rule)
