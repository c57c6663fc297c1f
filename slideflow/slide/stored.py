"""Where a pyramid level's JPEG tiles are stored: byte offsets, tile grid and JPEG headers.

The stored-tile reader reads compressed tiles straight from the file and decodes them itself,
so it needs, for one pyramid level: the tile size and grid, each tile's (offset, byte count),
and the bytes that turn a stored tile into a complete JPEG stream (shared JPEGTables for Aperio
SVS, an Adobe marker where the TIFF says the JPEG holds raw RGB). Two families are supported:

- tiled TIFF / BigTIFF with JPEG compression (Aperio SVS, generic pyramidal TIFF), found with
  tifffile for the backends that read them with openslide's own pixel grid;
- DICOM VL whole-slide images with TILED_FULL frames in JPEG baseline (pydicom).

Everything else (JPEG 2000, LZW, NDPI, MRXS, ...) returns a reason instead of a layout and is
read by the backend's `read_region`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..remote.dicomweb import JPEG_BASELINE, FrameSource
from ..remote.fetch import run_all
from ..remote.source import LocalSource, merge_spans
from ..remote.url import RemoteError

if TYPE_CHECKING:  # backends/__init__ imports remote_open, which imports this module
    from .backends.base import SlideReader

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
#: APP14 'Adobe' marker with transform 0: tells libjpeg the 3 components are RGB, not YCbCr
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
#: openslide vendors whose levels are plain tiled TIFF pages (same pixel grid as the file)
TIFF_VENDORS = ("aperio", "generic-tiff")
JPEG_BASELINE_UIDS = ("1.2.840.10008.1.2.4.50",)


@dataclass
class StoredLevel:
    """One pyramid level stored as a grid of JPEG tiles in one file.

    `offsets`/`counts` are row-major over the (rows, cols) tile grid; a count of 0 is a missing
    tile (read as white background, as openslide does). `header` + stored[2:] is a complete
    JPEG stream (the stored tile's own SOI is replaced by a header carrying the shared tables).
    """

    path: Path
    width: int
    height: int
    tile_w: int
    tile_h: int
    offsets: np.ndarray
    counts: np.ndarray
    header: bytes = SOI
    source: str = "tiff"
    src: Any = None  # byte source (slideflow.remote.source); None: the local file
    _ahead: dict = field(default_factory=dict, repr=False)
    _ahead_lock: Any = field(default_factory=threading.Lock, repr=False)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_w)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_h)

    def byte_source(self):
        """Where the compressed tiles are read from: `src` (a URL's ranged reads), else this
        file with pread (`slideflow.remote.source`)."""
        if self.src is None:
            self.src = LocalSource(self.path)
        return self.src

    def read(self, keys: list[int] | np.ndarray) -> dict[int, bytes | None]:
        """Compressed bytes of the tiles `keys` (flat indices), one read per contiguous span
        (tiles already `prefetch`ed are taken from memory). Missing tiles map to None."""
        keys = sorted(int(k) for k in keys)
        out: dict[int, bytes | None] = {}
        if self._ahead:
            with self._ahead_lock:
                for k in keys:
                    if k in self._ahead:
                        out[k] = self._ahead.pop(k)
        src = self.byte_source()
        if hasattr(src, "read_tiles"):  # frames by number (DICOMweb), not byte spans
            out.update(src.read_tiles([k for k in keys if k not in out]))
            return out
        spans = self._spans([k for k in keys if k not in out], out)
        if not spans:
            return out
        ranges = [self._range(g) for g in spans]
        for g, (start, end), data in zip(spans, ranges, src.read_spans(ranges)):
            if len(data) != end - start:
                raise OSError(f"{self.path}: file truncated (tile bytes {start}..{end} missing)")
            for k in g:
                a = int(self.offsets[k]) - start
                out[k] = bytes(data[a:a + int(self.counts[k])])  # a tile's own bytes
        return out

    def _spans(self, keys: list[int], missing: dict[int, bytes | None]) -> list[list[int]]:
        """Sorted `keys` split into runs stored back to back (one read each); tiles not stored
        go to `missing` as None."""
        spans: list[list[int]] = []
        for k in keys:
            if self.counts[k] == 0:
                missing[k] = None
                continue
            last = spans[-1][-1] if spans else None
            if last is None or self.offsets[last] + self.counts[last] != self.offsets[k]:
                spans.append([])
            spans[-1].append(k)
        return spans

    def _range(self, span: list[int]) -> tuple[int, int]:
        return int(self.offsets[span[0]]), int(self.offsets[span[-1]] + self.counts[span[-1]])

    def prefetch(self, keys: list[int], ready: Callable[[list[int]], None] | None = None
                 ) -> None:
        """Fetch the tiles `keys` now for later `read` calls: a remote source's merged ranged
        GETs run concurrently and `ready(tiles)` is called as each one's tiles are in memory,
        so their decoding starts before the others arrive. A local file is read where it is
        needed (`ready(keys)` at once); frames by number come in one call."""
        src = self.byte_source()
        if not getattr(src, "remote", False):
            if ready is not None:
                ready(list(keys))
            return
        keys = sorted(int(k) for k in keys)
        if hasattr(src, "read_tiles"):
            parts = [keys]
        else:  # one part per ranged GET: the spans read_spans would merge into one request
            none: dict[int, bytes | None] = {}
            spans = self._spans(keys, none)
            ranges = merge_spans([self._range(g) for g in spans])
            starts = [a for a, _ in ranges]
            parts = [[] for _ in ranges]
            for g in spans:  # each span lies inside one merged range
                parts[bisect.bisect_right(starts, self._range(g)[0]) - 1].extend(g)
            if none:
                parts.insert(0, list(none))

        def one(part: list[int]) -> None:
            data = self.read(part)
            with self._ahead_lock:
                self._ahead.update(data)
            if ready is not None:
                ready(part)

        run_all([lambda p=p: one(p) for p in parts], getattr(src, "concurrency", 1))

    def stream(self, stored: bytes) -> bytes:
        """A complete JPEG stream for one stored tile."""
        if not stored.startswith(SOI):
            raise ValueError(f"{self.path}: stored tile is not a JPEG stream")
        return self.header + stored[2:] if self.header != SOI else stored

    def close(self) -> None:
        if self.src is not None:
            self.src.close()
        self._ahead.clear()


def open_stored_level(reader: SlideReader, level: int) -> tuple[StoredLevel | None, str]:
    """The stored layout of `reader`'s `level`, or (None, why the region path must be used)."""
    try:
        if reader.name == "openslide":
            vendor = reader.vendor
            if vendor not in TIFF_VENDORS:
                return None, f"openslide vendor {vendor!r} is not a plain tiled TIFF"
            return _tiff_level(reader.path, reader.level_dimensions[level])
        if getattr(reader, "dicomweb", None) is not None:
            return _dicomweb_level(reader.dicomweb, reader.level_dimensions[level])
        src = getattr(reader, "byte_source", None)
        if src is not None:  # a URL read in place (checked JPEG-tiled when it was opened)
            return _tiff_level(reader.path, reader.level_dimensions[level], src)
        if reader.name == "dicom":
            return _dicom_level(reader.path, reader.level_dimensions[level])
    except RemoteError:  # the network failed, not the layout: the slide fails, naming why
        raise
    except Exception as exc:  # noqa: BLE001 - any parse problem means: use the region path
        return None, f"stored tiles unreadable ({type(exc).__name__}: {exc})"
    return None, f"backend {reader.name!r} has no stored-tile layout"


# -- TIFF -------------------------------------------------------------------------------------
def _tiff_level(path: Path, dims: tuple[int, int], src: Any = None
                ) -> tuple[StoredLevel | None, str]:
    import tifffile

    with tifffile.TiffFile(src.open() if src is not None else path) as tf:
        if tf.is_ndpi or tf.is_scn or tf.is_philips or tf.is_qpi:
            return None, "NDPI/SCN/Philips/QPTIFF layouts are read through the backend"
        pages = [p for p in tf.pages if (p.imagewidth, p.imagelength) == tuple(dims)]
        if not pages:
            return None, f"no TIFF page of size {dims[0]}x{dims[1]}"
        page = pages[0]
        why = _tiff_unsupported(page)
        if why:
            return None, why
        offsets = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        tables = page.jpegtables
        photometric = int(page.photometric)
        first = next((int(i) for i in np.flatnonzero(counts)), None)
        sample = b""
        if first is not None:
            n = min(int(counts[first]), 4096)
            if src is not None:
                sample = src.read(int(offsets[first]), n)
            else:
                with open(path, "rb") as fh:
                    fh.seek(int(offsets[first]))
                    sample = fh.read(n)
    layout = StoredLevel(path, int(dims[0]), int(dims[1]), int(page.tilewidth),
                         int(page.tilelength), offsets, counts, source="tiff", src=src)
    if len(offsets) != layout.rows * layout.cols:
        return None, f"{len(offsets)} tiles stored for a {layout.cols}x{layout.rows} grid"
    layout.header = _header(bytes(tables) if tables else None, sample, rgb=photometric == 2)
    return layout, "tiff"


def _tiff_unsupported(page) -> str | None:
    if not page.is_tiled:
        return "the level is stored in strips, not tiles"
    if int(page.compression) != 7:
        return f"compression {getattr(page.compression, 'name', page.compression)} is not JPEG"
    if page.samplesperpixel != 3 or page.bitspersample != 8 or int(page.planarconfig) != 1:
        return "not 8-bit interleaved RGB"
    if int(page.photometric) not in (2, 6):  # RGB, YCbCr
        return f"photometric {page.photometric!r} is not RGB/YCbCr"
    if getattr(page, "tiledepth", 1) not in (1, None) or page.imagedepth not in (1, None):
        return "volumetric tiles"
    return None


def _markers(stream: bytes) -> set[int]:
    """JPEG marker codes before the first SOS/SOF (APPn, DQT, ...)."""
    found: set[int] = set()
    i = 2 if stream.startswith(SOI) else 0
    while i + 4 <= len(stream) and stream[i] == 0xFF:
        code = stream[i + 1]
        found.add(code)
        if code in (0xDA, 0xD9):
            break
        i += 2 + int.from_bytes(stream[i + 2:i + 4], "big")
    return found


def _header(tables: bytes | None, sample: bytes, rgb: bool) -> bytes:
    """SOI [+ Adobe RGB marker] [+ shared tables]: prefix for stored[2:].

    A TIFF with photometric RGB stores raw R, G, B components; libjpeg assumes YCbCr unless the
    stream says otherwise (JFIF, Adobe marker, or component ids 'R','G','B'), so the Adobe
    marker is added where needed, which reproduces what openslide/libtiff decode.
    """
    body = tables[2:-2] if tables and tables.startswith(SOI) and tables.endswith(EOI) else b""
    head = SOI
    if rgb:
        codes = _markers(sample) | _markers((tables or b"")[:4096])
        if 0xE0 not in codes and 0xEE not in codes and not _rgb_component_ids(sample):
            head += ADOBE_RGB
    return head + body


def _rgb_component_ids(stream: bytes) -> bool:
    i = stream.find(b"\xff\xc0")
    if i < 0:
        i = stream.find(b"\xff\xc1")
    if i < 0 or i + 19 > len(stream):
        return False
    return stream[i + 10] == ord("R") and stream[i + 13] == ord("G") and stream[i + 16] == ord("B")


# -- DICOM ------------------------------------------------------------------------------------
def _dicom_level(path: Path, dims: tuple[int, int]) -> tuple[StoredLevel | None, str]:
    import pydicom

    from .backends.dicom_backend import quiet_long_uid_warning

    quiet_long_uid_warning()  # converters' over-long UIDs are harmless here
    return _dicom_scan(path, dims, pydicom)


def _dicom_scan(path: Path, dims: tuple[int, int], pydicom) -> tuple[StoredLevel | None, str]:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    reasons = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, defer_size=1024)
        except Exception:  # noqa: BLE001 - not a DICOM file: skip it
            continue
        size = _volume_size(ds)
        if size != tuple(dims):
            continue
        why = _dicom_unsupported(ds)
        if why:
            reasons.append(why)
            continue
        layout = StoredLevel(Path(f), size[0], size[1], int(ds.Columns), int(ds.Rows),
                             np.zeros(0, np.int64), np.zeros(0, np.int64), source="dicom")
        offsets, counts = _dicom_fragments(f, int(ds.get_item("PixelData").file_tell))
        if len(offsets) != int(ds.get("NumberOfFrames", 1)) or len(offsets) != \
                layout.rows * layout.cols:
            reasons.append(f"{len(offsets)} fragments for a {layout.cols}x{layout.rows} grid")
            continue
        layout.offsets, layout.counts = offsets, counts
        with open(f, "rb") as fh:
            fh.seek(int(offsets[0]))
            sample = fh.read(min(int(counts[0]), 4096))
        layout.header = _header(None, sample, rgb=ds.PhotometricInterpretation == "RGB")
        return layout, "dicom"
    return None, "; ".join(reasons) or f"no DICOM VOLUME instance of size {dims[0]}x{dims[1]}"


def _volume_size(ds) -> tuple[int, int] | None:
    """(width, height) of a DICOM WSI VOLUME instance's whole pixel matrix; None for the
    other image types (label, overview, thumbnail)."""
    if "VOLUME" not in [str(v).upper() for v in ds.get("ImageType", [])]:
        return None
    return (int(ds.get("TotalPixelMatrixColumns", ds.Columns)),
            int(ds.get("TotalPixelMatrixRows", ds.Rows)))


def _dicomweb_level(series, dims: tuple[int, int]) -> tuple[StoredLevel | None, str]:
    """The level of a DICOMweb series (`slideflow.remote.dicomweb`) whose frames are `dims`."""
    from pydicom.dataset import FileMetaDataset


    reasons = []
    for sop, ds in series.instances().items():
        size = _volume_size(ds)
        if size != tuple(dims):
            continue
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = JPEG_BASELINE  # what the frames are asked for as
        why = _dicom_unsupported(ds)
        if why:
            reasons.append(why)
            continue
        n = int(ds.get("NumberOfFrames", 1))
        layout = StoredLevel(series.url, size[0], size[1], int(ds.Columns), int(ds.Rows),
                             np.arange(n, dtype=np.int64), np.ones(n, np.int64),
                             source="dicomweb", src=FrameSource(series, sop))
        if n != layout.rows * layout.cols:
            reasons.append(f"{n} frames for a {layout.cols}x{layout.rows} grid")
            continue
        sample = layout.src.read_tiles([0])[0][:4096]
        layout.header = _header(None, sample, rgb=ds.PhotometricInterpretation == "RGB")
        return layout, "dicomweb"
    return None, "; ".join(reasons) or f"no DICOM VOLUME instance of size {dims[0]}x{dims[1]}"


def _dicom_unsupported(ds) -> str | None:
    if str(ds.file_meta.TransferSyntaxUID) not in JPEG_BASELINE_UIDS:
        return f"transfer syntax {ds.file_meta.TransferSyntaxUID} is not JPEG baseline"
    if str(ds.get("DimensionOrganizationType", "TILED_FULL")) != "TILED_FULL":
        return "frames are TILED_SPARSE"
    if int(ds.get("SamplesPerPixel", 3)) != 3 or int(ds.get("BitsAllocated", 8)) != 8:
        return "not 8-bit RGB"
    if int(ds.get("TotalPixelMatrixFocalPlanes", 1)) != 1 or \
            int(ds.get("NumberOfOpticalPaths", 1)) != 1 or "ConcatenationUID" in ds:
        return "several focal planes, optical paths or concatenated instances"
    return None


def _dicom_fragments(path: Path, value_at: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, counts) of the encapsulated Pixel Data fragments (one per frame)."""
    offsets, counts = [], []
    with open(path, "rb") as fh:
        fh.seek(value_at)
        head = fh.read(8)
        if head[:4] != b"\xfe\xff\x00\xe0":
            raise ValueError("pixel data is not encapsulated (no basic offset table item)")
        fh.seek(int.from_bytes(head[4:], "little"), 1)
        while True:
            head = fh.read(8)
            if len(head) < 8 or head[:4] == b"\xfe\xff\xdd\xe0":
                break
            if head[:4] != b"\xfe\xff\x00\xe0":
                raise ValueError("malformed pixel data item")
            length = int.from_bytes(head[4:], "little")
            offsets.append(fh.tell())
            counts.append(length)
            fh.seek(length, 1)
    return np.asarray(offsets, np.int64), np.asarray(counts, np.int64)
