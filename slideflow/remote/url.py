"""URLs where a slide path goes: recognising them, naming them, and the filesystem behind them.

A URL is `scheme://...` with a scheme other than `file` (s3://, gs://, https://, any fsspec
protocol). Credentials come from where each library looks (environment, profiles, instance
roles); `SLIDEFLOW_ANON=1` or `anon=True` reads public buckets without signing. They are never
logged or written anywhere: only the URL is (and a URL's user:password part is removed from
every message).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import SlideflowError
from ..io.location import is_url, slide_path

#: the extra that installs the remote readers
EXTRA_HINT = "pip install 'slideflow[cloud]'"


class RemoteError(SlideflowError, OSError):
    """A remote slide cannot be read (the message names the URL, byte range and attempts)."""


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


#: query parameters that carry credentials (presigned S3/GCS URLs, Azure SAS `sig`, tokens,
#: API keys): their values never reach a message, a log or a file
_SECRET_PARAM = re.compile(r"token|sig|secret|passw|pwd|key|credential|auth", re.IGNORECASE)
REDACTED = "REDACTED"


def safe_url(url: str) -> str:
    """`url` without credentials, for messages and outputs: no user:password part, and the
    values of query parameters named like a secret (token, signature, key, credential...)
    replaced by REDACTED. A `$VAR` / `${VAR}` reference is kept (it names no secret)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret(k, v) for k, v in pairs):
            query = "&".join(f"{k}={REDACTED}" if _is_secret(k, v) else
                             urlencode({k: v}, safe="${}") for k, v in pairs)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _is_secret(name: str, value: str) -> bool:
    return bool(_SECRET_PARAM.search(name)) and bool(value) and not value.startswith("$")


def expand_url(url: str) -> str:
    """`$VAR` and `${VAR}` in a URL replaced from the environment (a stored URL names its
    token this way instead of holding it); an unset variable is an error naming it."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise RemoteError(f"{safe_url(url)}: the environment variable {name} is not set "
                              "(the URL takes it from there)")
        return os.environ[name]

    return _VAR.sub(sub, url) if "$" in url else url


_VAR = re.compile(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)")


def url_basename(url: str) -> str:
    """Last path component of a URL (a prefix's folder name when it ends with '/')."""
    path = urlsplit(url).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or urlsplit(url).netloc


def url_name(url: str) -> str:
    """Slide name of a URL: the file stem, or the folder name of a prefix ending in '/'."""
    if scheme(url).startswith("dicomweb"):  # the series UID (a manifest can rename it)
        from urllib.parse import parse_qs

        return parse_qs(urlsplit(url).query).get("series", ["dicomweb"])[0]
    base = url_basename(url)
    if url.rstrip().endswith("/"):
        return base
    for suffix in (".ome.tiff", ".ome.tif"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base.rsplit(".", 1)[0] if "." in base else base


def anonymous(anon: bool | None = None) -> bool:
    """Whether to read without credentials: `anon` when given, else SLIDEFLOW_ANON."""
    if anon is not None:
        return bool(anon)
    return os.environ.get("SLIDEFLOW_ANON", "").strip().lower() in ("1", "true", "yes")


def filesystem(url: str, anon: bool | None = None, params: str | None = None
               ) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`; `params`: a query string sent with every
    http(s) request (a folder's access token, for its listing).

    S3 retries are switched off in botocore and s3fs: `fetch` retries, so that attempts are
    counted and named. `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` select an S3-compatible
    endpoint (MinIO, Ceph, a test server). SigV4 is asked for explicitly: botocore would
    presign with SigV2, which newer buckets and regions refuse.
    """
    try:
        import fsspec
    except ImportError as exc:
        raise RemoteError(f"{safe_url(url)}: reading URLs needs fsspec ({EXTRA_HINT})") from exc
    proto = scheme(url)
    options: dict[str, Any] = {}
    if proto in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {"anon": anonymous(anon),
                   "config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"},
                                     "signature_version": "s3v4"}}
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    elif proto in ("gs", "gcs") and anonymous(anon):
        options = {"token": "anon"}
    elif proto in ("http", "https") and params:
        options = {"params": dict(parse_qsl(params, keep_blank_values=True))}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise RemoteError(f"{safe_url(url)}: the {proto}:// reader is not installed ({exc}); "
                          f"{EXTRA_HINT} (gcsfs for gs://)") from exc
    except ValueError as exc:
        raise RemoteError(f"{safe_url(url)}: unknown URL scheme {proto!r} ({exc})") from exc
    if proto in ("s3", "s3a"):
        fs.retries = 1  # s3fs's own retry loop: off (see above)
    return fs, path


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


__all__ = ["REDACTED", "RemoteError", "anonymous", "expand_url", "filesystem", "is_url", "safe_url",
           "slide_path",
           "url_basename", "url_name"]
