"""DICOMweb: a slide named by `dicomweb://host/path?study=UID&series=UID` (HTTPS) or
`dicomweb+http://...` (plain HTTP, for local servers), read frame by frame.

QIDO-RS finds the series' instances, WADO-RS gives their metadata and their stored frames
(`/frames/1,2,3`, as `image/jpeg` for JPEG baseline series), through `dicomweb-client`. The
frames are the JPEG streams a local DICOM file stores, so slideflow decodes them exactly as it
decodes local DICOM frames. Frame requests are retried like ranged GETs (`fetch`); every
response is counted in the slide's `FetchStats`.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from .fetch import FetchStats, current_stats, env_float, http_status, is_transient
from .url import EXTRA_HINT, RemoteError, safe_url

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: frames asked for in one WADO-RS request
MAX_FRAMES = 256


def parse_dicomweb(url: str, series_needed: bool = True) -> tuple[str, str, str]:
    """(service URL, study UID, series UID) of a dicomweb:// URL (UIDs may be '' for a
    service or a study listed as a project source: `series_needed=False`)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    study, series = query.get("study", [""])[0], query.get("series", [""])[0]
    if series_needed and (not study or not series):
        raise RemoteError(f"{safe_url(url)}: a DICOMweb slide is named by "
                          "dicomweb://host/path?study=<StudyInstanceUID>&series=<SeriesInstanceUID>")
    http = "http" if parts.scheme.lower() == "dicomweb+http" else "https"
    return urlunsplit((http, parts.netloc, parts.path.rstrip("/"), "", "")), study, series


class DicomWebSeries:
    """One DICOMweb series: its client, instances' metadata (cached) and frames."""

    def __init__(self, url: str, stats: FetchStats | None = None, *,
                 series_needed: bool = True):
        try:
            import requests
            from dicomweb_client.api import DICOMwebClient
        except ImportError as exc:
            raise RemoteError(f"{safe_url(url)}: DICOMweb needs dicomweb-client ({EXTRA_HINT})"
                              ) from exc
        self.url, self.name = url, safe_url(url)
        self.base, self.study, self.series = parse_dicomweb(url, series_needed)
        self.stats = stats if stats is not None else (current_stats() or FetchStats())
        session = requests.Session()
        session.hooks["response"].append(self._count)
        self.client = DICOMwebClient(self.base, session=session)
        self.client.set_http_retry_params(retry=False)  # `_retry` retries, counting attempts
        self._meta: dict[str, Any] | None = None

    def _count(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.stats.add(requests=1, nbytes=int(response.headers.get("Content-Length") or 0))

    def list_series(self) -> list[str]:
        """dicomweb URLs of the slide-microscopy series (Modality SM) of the service, or of
        its study when the URL names one; other query parameters are kept."""
        found = self._retry(lambda: self.client.search_for_series(
            self.study or None, search_filters={"Modality": "SM"}, get_remaining=True),
            "QIDO-RS series search")
        parts = urlsplit(self.url)
        keep = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                if k not in ("study", "series")]
        out = []
        for item in found:
            study, series = (item[t]["Value"][0] for t in ("0020000D", "0020000E"))
            query = urlencode([("study", study), ("series", series), *keep])
            out.append(urlunsplit(parts._replace(query=query)))
        return sorted(out)

    def instances(self) -> dict[str, Any]:
        """{SOPInstanceUID: pydicom Dataset of its metadata} (fetched once)."""
        if self._meta is None:
            from pydicom import Dataset

            found = self._retry(lambda: self.client.search_for_instances(
                self.study, self.series), "QIDO-RS search")
            meta = {}
            for item in found:
                uid = item["00080018"]["Value"][0]
                js = self._retry(lambda u=uid: self.client.retrieve_instance_metadata(
                    self.study, self.series, u), f"metadata of {uid}")
                meta[uid] = Dataset.from_json(js)
            if not meta:
                raise FileNotFoundError(f"{self.name}: no instances in this series")
            self._meta = meta
        return self._meta

    def frames(self, sop: str, numbers: list[int]) -> list[bytes]:
        """Stored JPEG frames `numbers` (1-based) of instance `sop`."""
        out: list[bytes] = []
        for a in range(0, len(numbers), MAX_FRAMES):
            part = numbers[a:a + MAX_FRAMES]
            got = self._retry(lambda p=part: self.client.retrieve_instance_frames(
                self.study, self.series, sop, p, media_types=(("image/jpeg", JPEG_BASELINE),)),
                f"frames {part[0]}..{part[-1]} of {sop}")
            if len(got) != len(part):
                raise RemoteError(f"{self.name}: asked for {len(part)} frames of {sop}, got "
                                  f"{len(got)}")
            out += got
        return out

    def _retry(self, call: Any, what: str) -> Any:
        tries = int(env_float("SLIDEFLOW_REMOTE_RETRIES", 4)) + 1
        backoff = env_float("SLIDEFLOW_REMOTE_BACKOFF", 0.25)
        last: BaseException | None = None
        for attempt in range(1, tries + 1):
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - requests and dicomweb-client errors
                if http_status(exc) == 404:
                    raise FileNotFoundError(f"{self.name}: {what}: not found") from None
                if not is_transient(exc):
                    raise RemoteError(f"{self.name}: {what} failed at attempt {attempt}: "
                                      f"{type(exc).__name__}: {exc}") from exc
                last = exc
                self.stats.add(retries=int(attempt < tries))
            if attempt < tries:
                time.sleep(min(4.0, backoff * 2 ** (attempt - 1)))
        raise RemoteError(f"{self.name}: {what} failed after {tries} attempts: "
                          f"{type(last).__name__}: {last}")


class FrameSource:
    """The stored frames of one instance, as the stored-tile reader's byte source
    (`read_tiles`: flat tile index k -> frame k + 1)."""

    remote = True

    def __init__(self, series: DicomWebSeries, sop: str):
        self.series, self.sop, self.name = series, sop, series.name
        self.stats = series.stats

    def read_tiles(self, keys: list[int]) -> dict[int, bytes]:
        keys = sorted(keys)
        return dict(zip(keys, self.series.frames(self.sop, [k + 1 for k in keys])))

    def close(self) -> None:
        pass


__all__ = ["DicomWebSeries", "FrameSource", "parse_dicomweb"]
