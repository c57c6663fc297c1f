"""One remote object read by byte ranges: retries with backoff, an ETag check, counters.

Every ranged GET carries the ETag seen when the object was opened (`If-Match`), so an object
replaced while a slide is read fails with a clear error instead of mixing bytes of two files.
5xx and 429 answers, timeouts, dropped connections and short bodies are retried with
exponential backoff (`SLIDEFLOW_REMOTE_RETRIES` retries, default 4; first wait
`SLIDEFLOW_REMOTE_BACKOFF` s, default 0.25, doubled each time, at most 4 s). Every error names
the URL, the byte range and the attempt count.

S3 objects are read through a presigned URL and urllib3 (`s3_presigned`): signed once per
object instead of once per request, which cuts the client's CPU per GET several-fold.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .s3_presigned import PresignedGet, PresignRefused, proxied
from .url import RemoteError, filesystem, safe_url, scheme, url_basename

#: HTTP statuses worth another try
RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class FetchStats:
    """Requests made and bytes received for one slide (thread-safe counters)."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int = 0, nbytes: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes += nbytes
            self.retries += retries

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_fetched": self.bytes, "retries": self.retries}


_current: contextvars.ContextVar[FetchStats | None] = contextvars.ContextVar(
    "slideflow_fetch_stats", default=None)


def current_stats() -> FetchStats | None:
    """The counters `begin_counting` set for this thread, if any."""
    return _current.get()


def begin_counting() -> contextvars.Token:
    """Count the requests of remote objects opened from now on in this thread (one slide of a
    batch run); `end_counting` returns the counts."""
    return _current.set(FetchStats())


def end_counting(token: contextvars.Token) -> dict[str, int] | None:
    """{requests, bytes_fetched, retries} since `begin_counting`, None when nothing was
    fetched."""
    stats = _current.get()
    _current.reset(token)
    return stats.as_dict() if stats is not None and stats.requests else None


class Changed(RemoteError):
    """The object changed (ETag or size) since it was opened."""


class _Retry(Exception):
    """A failure worth another attempt."""


def http_status(exc: BaseException) -> int | None:
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None:
            continue
        for attr in ("status", "status_code"):
            v = getattr(e, attr, None)
            if isinstance(v, int):
                return v
        resp = getattr(e, "response", None)
        code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(
            resp, dict) else getattr(resp, "status_code", None)  # botocore / requests
        if isinstance(code, int):
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Timeouts, dropped connections, 5xx: worth retrying. 4xx (but 408/425/429): not."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    status = http_status(exc)
    if status is not None:
        return status in RETRY_STATUS
    names = {c.__name__ for c in type(exc).__mro__}
    transient = {"TimeoutError", "ConnectionError", "ClientPayloadError", "ClientConnectionError",
                 "ServerDisconnectedError", "IncompleteRead", "ReadTimeoutError",
                 "EndpointConnectionError", "ConnectionClosedError", "ResponseStreamingError",
                 "ClientOSError", "ContentLengthError"}
    return bool(names & transient) or isinstance(exc, asyncio.TimeoutError)


def _is_changed(exc: BaseException) -> bool:
    return http_status(exc) == 412 or "PreconditionFailed" in repr(exc) or \
        "Precondition" in str(exc)


class RemoteObject:
    """A remote file opened once: its size and ETag, and ranged reads of it."""

    def __init__(self, url: str, *, anon: bool | None = None, stats: FetchStats | None = None):
        self.url = url
        self.stats = stats if stats is not None else (current_stats() or FetchStats())
        self.retries = int(env_float("SLIDEFLOW_REMOTE_RETRIES", 4))
        self.backoff = env_float("SLIDEFLOW_REMOTE_BACKOFF", 0.25)
        self.fs, self.path = filesystem(url, anon)
        self.proto = scheme(url)
        self.fs.invalidate_cache(self.path)  # a listing's cached entry may predate a change
        info = self._attempts(lambda: self.fs.info(self.path), "metadata")
        if info.get("type") == "directory":
            raise RemoteError(f"{self.name}: a prefix, not an object; end it with '/' to read "
                              "a DICOM series stored as several objects")
        self.size = int(info.get("size") or 0)
        etag = info.get("ETag") or info.get("etag")
        self.etag: str | None = str(etag) if etag else None
        self.presigned: PresignedGet | None = None
        if self.proto in ("s3", "s3a"):
            self.presigned = self._presigned_get()

    def _presigned_get(self) -> PresignedGet | None:
        """Ranged GETs through a presigned URL, unless a proxy is set for the endpoint."""
        endpoint = getattr(getattr(self.fs, "s3", None), "meta", None)
        endpoint = getattr(endpoint, "endpoint_url", None) or "https://s3.amazonaws.com"
        return None if proxied(endpoint) else PresignedGet(self.fs, self.path)

    @property
    def name(self) -> str:
        return safe_url(self.url)

    def identity(self) -> dict[str, Any]:
        """What a resume check compares: name, bytes, ETag."""
        return {"name": url_basename(self.url), "bytes": self.size, "etag": self.etag}

    # -- one ranged GET ------------------------------------------------------------------------
    def get(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object, retried on transient failures."""
        if end <= start:
            return b""
        end = min(end, self.size)
        return self._attempts(lambda: self._get_once(start, end), f"bytes {start}-{end - 1}",
                              expect=end - start)

    def _get_once(self, start: int, end: int) -> bytes:
        presigned = self.presigned  # another thread may drop it meanwhile
        if presigned is not None:
            try:
                return presigned.get(start, end, self.etag, lambda: self.stats.add(requests=1))
            except PresignRefused:  # signed requests from now on (and this one again)
                self.presigned = None
                self.stats.add(requests=1)
        if self.proto in ("s3", "s3a"):
            from fsspec.asyn import sync

            bucket, key, _ = self.fs.split_path(self.path)
            return sync(self.fs.loop, _s3_range, self.fs, bucket, key, start, end, self.etag)
        if self.proto in ("http", "https"):  # a weak ETag (W/"...") never matches If-Match
            strong = self.etag and not self.etag.startswith("W/")
            headers = {"If-Match": self.etag} if strong else {}
            return self.fs.cat_file(self.path, start=start, end=end, headers=headers)
        return self.fs.cat_file(self.path, start=start, end=end)

    def _attempts(self, call: Any, what: str, expect: int | None = None) -> Any:
        last: BaseException | None = None
        tries = self.retries + 1
        for attempt in range(1, tries + 1):
            self.stats.add(requests=1, retries=int(attempt > 1))
            try:
                out = call()
            except (FileNotFoundError, PermissionError) as exc:
                kind = "not found" if isinstance(exc, FileNotFoundError) else "access denied " \
                    "(check the credentials, or SLIDEFLOW_ANON=1 for a public bucket)"
                raise type(exc)(f"{self.name}: {kind} ({what}, attempt {attempt})") from None
            except Exception as exc:  # noqa: BLE001 - each library raises its own types
                if _is_changed(exc):
                    raise Changed(f"{self.name}: the object changed since it was opened "
                                  f"(ETag {self.etag}); {what}, attempt {attempt}. Rerun the "
                                  "slide") from exc
                if not is_transient(exc):
                    raise RemoteError(f"{self.name}: {what} failed at attempt {attempt}: "
                                      f"{type(exc).__name__}: {exc}") from exc
                last = exc
            else:
                if expect is None:
                    return out
                self.stats.add(nbytes=len(out))
                if len(out) == expect:
                    return out
                last = _Retry(f"short body: {len(out)} of {expect} bytes")
            if attempt < tries:
                wait = min(4.0, self.backoff * 2 ** (attempt - 1))
                time.sleep(wait * (0.5 + random.random() / 2))
        raise RemoteError(f"{self.name}: {what} failed after {tries} attempts: "
                          f"{type(last).__name__}: {last}")


async def _s3_range(fs: Any, bucket: str, key: str, start: int, end: int,
                    etag: str | None) -> bytes:
    """One GetObject with Range and If-Match (s3fs's own call, without its retry loop)."""
    kw = {"IfMatch": etag} if etag else {}
    client = await fs.get_s3(bucket)
    resp = await client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                                   **kw)
    try:
        return await resp["Body"].read()
    finally:
        resp["Body"].close()


def run_all(calls: list[Any], limit: int) -> list[Any]:
    """Run zero-argument callables with at most `limit` at once; results in order."""
    if len(calls) <= 1:
        return [c() for c in calls]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(limit, len(calls)),
                            thread_name_prefix="sf-fetch") as pool:
        return list(pool.map(lambda c: c(), calls))


__all__ = ["Changed", "FetchStats", "RemoteObject", "begin_counting", "current_stats",
           "end_counting", "env_float", "http_status", "is_transient", "run_all"]
