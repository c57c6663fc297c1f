"""Slides in object storage and over HTTP: URLs, ranged reads, a local cache.

- `url`: which strings are URLs, their slide names, the fsspec filesystem behind them
  (credentials from the usual places; anonymous only when asked).
- `fetch`: one ranged GET with retries, backoff and an ETag check, counted per slide.
- `source`: byte sources (a local file read with pread, a URL read with merged ranged GETs)
  and a block-cached file object for parsing metadata.
- `cache`: a size-bounded local cache for slides that must be opened as files.

Everything heavy (fsspec, s3fs, aiohttp) is imported on first use: the `[cloud]` extra.
"""

from __future__ import annotations

from .url import is_url, url_name

__all__ = ["is_url", "url_name"]
