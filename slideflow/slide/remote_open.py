"""Opening a slide named by a URL: read in place when slideflow can, else from the local cache.

Read in place: a TIFF (Aperio SVS, generic pyramidal TIFF) whose pyramid levels are all tiled
8-bit RGB JPEG. tiffslide parses it through a block-cached file object (a few ranged GETs for
the IFDs, tile offsets and JPEG tables), and the stored-tile reader fetches each batch's tiles
with merged ranged GETs (`slideflow.remote.source`). Everything else (JPEG 2000 SVS, NDPI,
DICOM, MRXS, a prefix ending in '/' holding a DICOM series) is downloaded once into the
slide cache (`slideflow.remote.cache`) and opened as a local file by the usual backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SlideflowError, SlideNotFoundError
from ..remote.cache import SlideCache
from ..remote.dicomweb import JPEG_BASELINE, DicomWebSeries
from ..remote.fetch import FetchStats, _current
from ..remote.source import RemoteSource
from ..remote.url import safe_url
from .backends.base import SlideReader
from .backends.local import open_local
from .backends.tiffslide_backend import TiffSlideReader
from .remote_list import find_remote_slides
from .stored import _tiff_unsupported

#: backends that may read a URL in place
IN_PLACE_BACKENDS = ("auto", "tiffslide")


class RemoteTiffReader(TiffSlideReader):
    """tiffslide over a URL's block-cached file object; `byte_source` feeds the stored-tile
    reader. `path` is the URL (a str)."""

    name = prefix = "tiffslide"

    def __init__(self, source: Any):
        import warnings

        import tiffslide

        self.path = source.name  # type: ignore[assignment] - a URL, not a local Path
        self.byte_source = source
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._slide = tiffslide.TiffSlide(source.open())
            self._props = dict(self._slide.properties)


def in_place_reason(source: Any) -> str | None:
    """None when every pyramid level is a tiled RGB JPEG TIFF page, else why not."""
    import tifffile


    head = source.read(0, 4)
    if head[:2] not in (b"II", b"MM"):
        return "not a TIFF file"
    with tifffile.TiffFile(source.open()) as tf:
        if tf.is_ndpi or tf.is_scn or tf.is_philips or tf.is_qpi:
            return "NDPI/SCN/Philips/QPTIFF layouts are opened as files"
        if not tf.series:
            return "no image series"
        for level in tf.series[0].levels:
            why = _tiff_unsupported(level.pages[0])
            if why:
                return why
    return None


def open_url(url: str, backend: str = "auto", *, stats: FetchStats | None = None,
             cache: Any = None) -> SlideReader:
    """A reader for the slide at `url` (see the module doc). `stats` counts its requests."""
    stats = stats if stats is not None else (_current.get() or FetchStats())
    if url.lower().startswith("dicomweb"):
        return _open_dicomweb(url, stats)

    cache = cache or SlideCache()
    try:
        obj = None
        if not url.endswith("/"):
            source = RemoteSource(url, stats=stats)
            obj = source.obj
            local = cache.cached(url, obj)
            if local is None:
                why = in_place_reason(source) if backend in IN_PLACE_BACKENDS else \
                    f"backend {backend!r} reads files"
                if why is None:
                    reader = RemoteTiffReader(source)
                    reader.fetch_stats = stats
                    return reader
        local = cache.fetch(url, stats=stats, obj=obj)
    except FileNotFoundError as exc:
        raise SlideNotFoundError(f"{safe_url(url)}: no such object ({exc})") from None
    try:
        reader = open_local(Path(local), backend)
    except SlideflowError as exc:  # name the URL the user gave, and where its copy is
        raise type(exc)(f"{safe_url(url)} (cached as {local}): {exc}") from exc
    reader.fetch_stats = stats
    return reader


def _open_dicomweb(url: str, stats: FetchStats) -> SlideReader:
    from .backends.dicom_backend import DicomReader

    series = DicomWebSeries(url, stats)

    class DicomWebReader(DicomReader):
        """wsidicom over DICOMweb (region reads, QC); `dicomweb` feeds the stored-tile
        reader with the series' frames."""

        def __init__(self) -> None:
            import warnings

            from wsidicom import WsiDicom
            from wsidicom.web import WsiDicomWebClient

            self.path = series.name  # type: ignore[assignment] - a URL
            self.dicomweb, self.fetch_stats = series, stats
            try:
                series.instances()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._wsi = WsiDicom.open_web(WsiDicomWebClient(series.client),
                                                  series.study, series.series,
                                                  requested_transfer_syntax=JPEG_BASELINE)
            except FileNotFoundError as exc:
                raise SlideNotFoundError(str(exc)) from None
            self._levels = list(self._wsi.levels)

    return DicomWebReader()


__all__ = ["RemoteTiffReader", "find_remote_slides", "in_place_reason", "open_url"]
