"""Ranged GETs of one S3 object through a presigned URL and a plain HTTP connection pool.

Why: a GetObject through s3fs hops into s3fs's event loop thread, signs the request (SigV4)
and has aiobotocore parse the answer: about 2 ms of client CPU per GET on a small machine,
several times the cost of the GET itself over urllib3, on cores a slide's decoding needs.
Here the object is signed once (a presigned GetObject URL from the same client, credentials
and endpoint s3fs uses; unsigned with `SLIDEFLOW_ANON=1`), and each read sends only `Range`
and `If-Match` (unsigned headers a presigned GET allows). The URL is signed again at half
its lifetime, and once more when S3 answers that it expired (clock skew, temporary
credentials ending early).

When S3 refuses the presigned form itself (a redirect to another region, a 400, a 403 other
than expiry: an S3-compatible store without query signing, say), `PresignRefused` tells the
caller to go back to signed requests for that object. With a proxy configured in the
environment for the endpoint, the caller keeps signed requests (botocore honours the proxy).

The presigned URL carries the signature in its query string: no message or exception raised
here contains it (errors name the HTTP status and S3's error code and message only).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

from .url import REDACTED, safe_url

#: seconds a presigned URL is valid for (it is signed again after half of this)
LIFETIME = 3600


class S3StatusError(OSError):
    """An error answer from S3 (`status` for the retry classification; no URL in the text)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"S3 answered {status} {code}: {message}".rstrip(": "))
        self.status = status
        self.code = code


class PresignRefused(Exception):
    """S3 does not take the presigned form for this object: use signed requests."""


class _RedactQuery(logging.Filter):
    """urllib3 logs each request's URL at DEBUG: its signature and credential go out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(safe_url(a) if isinstance(a, str) and "?" in a else a
                                for a in record.args)
        return True


_pool_lock = threading.Lock()
_pool: tuple[int, Any] | None = None


def _pool_manager() -> Any:
    """This process's urllib3 pool (a fork gets its own: sockets are never shared)."""
    global _pool
    pool = _pool
    if pool is not None and pool[0] == os.getpid():
        return pool[1]
    import urllib3
    from botocore.httpsession import get_cert_path

    with _pool_lock:
        if _pool is None:
            for name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry"):
                logging.getLogger(name).addFilter(_RedactQuery())
        if _pool is None or _pool[0] != os.getpid():
            n = max(1, int(os.environ.get("SLIDEFLOW_REMOTE_CONCURRENCY", 8)))
            # several slides may be read at once, each with n requests in flight
            _pool = (os.getpid(), urllib3.PoolManager(
                num_pools=16, maxsize=4 * n, cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)))
        return _pool[1]


def proxied(url: str) -> bool:
    """Whether the environment sends requests for `url`'s host through a proxy."""
    parts = urlsplit(url)
    proxies = getproxies_environment()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not \
        proxy_bypass_environment(parts.hostname or "", proxies)


def _xml_field(body: bytes, tag: str) -> str:
    m = re.search(rb"<%s>(.{0,300}?)</%s>" % (tag.encode(), tag.encode()), body, re.DOTALL)
    return m.group(1).decode("utf-8", "replace") if m else ""


class PresignedGet:
    """Ranged GETs of the S3 object `path` of the s3fs filesystem `fs`."""

    def __init__(self, fs: Any, path: str, lifetime: int | None = None):
        import urllib3

        self.fs, self.path = fs, path
        self.lifetime = int(lifetime or LIFETIME)
        self.timeout = urllib3.Timeout(connect=float(getattr(fs, "connect_timeout", 5)),
                                       read=float(getattr(fs, "read_timeout", 15)))
        self.signed = 0  # how many times the URL was signed
        self._url: str | None = None
        self._signed_at = 0.0
        self._lock = threading.Lock()

    def url(self, fresh: bool = False) -> str:
        """The presigned URL, signed again when half its lifetime has passed (or `fresh`)."""
        with self._lock:
            if fresh or self._url is None or \
                    time.monotonic() - self._signed_at >= self.lifetime / 2:
                self._url = self.fs.url(self.path, expires=self.lifetime)
                self._signed_at = time.monotonic()
                self.signed += 1
            return self._url

    def get(self, start: int, end: int, etag: str | None,
            resent: Callable[[], None] = lambda: None) -> bytes:
        """Bytes [start, end) under `If-Match: etag`; `resent` is called when the request is
        sent again with a new signature (S3 said the first one expired)."""
        try:
            return self._request(self.url(), start, end, etag)
        except S3StatusError as exc:
            if exc.status not in (400, 403) or "xpired" not in str(exc):
                raise
        resent()
        try:
            return self._request(self.url(fresh=True), start, end, etag)
        except S3StatusError as exc:
            if exc.status in (400, 403):  # expired again, signed just now: not the form's fault
                raise PermissionError(str(exc)) from None
            raise

    def _request(self, url: str, start: int, end: int, etag: str | None) -> bytes:
        import urllib3

        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = etag
        try:
            # the stored bytes as they are: a Content-Encoding is not undone on a byte range
            resp = _pool_manager().request("GET", url, headers=headers, retries=False,
                                           redirect=False, timeout=self.timeout,
                                           decode_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise _transport_error(exc, url) from None
        if resp.status == 206 or (resp.status == 200 and len(resp.data) == end - start):
            return resp.data
        code, message = _xml_field(resp.data, "Code"), _xml_field(resp.data, "Message")
        if resp.status == 200:
            message = "the whole object came back for a ranged GET"
        err = S3StatusError(resp.status, code, message)
        if resp.status == 404:
            raise FileNotFoundError(str(err))
        if resp.status in (301, 302, 307, 400, 403) and "xpired" not in str(err):
            raise PresignRefused(str(err))
        raise err


def _transport_error(exc: BaseException, url: str) -> OSError:
    """A timeout, a dropped connection or a TLS failure as a builtin error (TimeoutError and
    ConnectionError are retried; a TLS failure is not), its text cleared of the URL's
    query string."""
    import urllib3

    text = f"{type(exc).__name__}: {exc}"
    query = urlsplit(url).query
    if query:
        text = text.replace(query, REDACTED)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return OSError(text)
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return TimeoutError(text)
    return ConnectionError(text)


__all__ = ["LIFETIME", "PresignRefused", "PresignedGet", "S3StatusError", "proxied"]
