"""The slides under a URL prefix: an object-store prefix (`s3://bucket/cohort/`, `gs://...`),
an `https://` folder whose page links its files, or a DICOMweb service or study
(`dicomweb://host/path[?study=UID]`, its slide-microscopy series).

Kept apart from `remote_open` (which opens one slide) so that project sources and the command
line list a prefix without loading any slide reader.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ..errors import SlideNotFoundError
from ..remote.dicomweb import DicomWebSeries
from ..remote.url import filesystem, join, safe_url, scheme
from .paths import SLIDE_SUFFIXES


def find_remote_slides(prefix: str, recursive: bool = False) -> list[str]:
    """URLs of the slides under `prefix` (sorted); like `find_slides`, a folder holding
    several .dcm objects is one slide (its prefix, ending in '/'). A query on an http(s)
    prefix (an access token) is sent with the listing and kept on every slide URL."""
    if scheme(prefix).startswith("dicomweb"):
        found = DicomWebSeries(prefix, series_needed=False).list_series()
        if not found:
            raise SlideNotFoundError(f"{safe_url(prefix)}: no slide-microscopy series there")
        return found
    parts = urlsplit(prefix)
    web = scheme(prefix) in ("http", "https")
    query = parts.query if web else ""
    bare = urlunsplit(parts._replace(query="")) if query else prefix
    fs, path = filesystem(bare, params=query or None)
    base = path.rstrip("/")
    proto = scheme(prefix)
    fs.invalidate_cache(base)  # fsspec keeps listings per process: list afresh
    try:
        if web:  # links of the folder's page (one level: a page does not say what is a folder)
            keys = sorted(fs.ls(base + "/", detail=False))
        else:
            keys = sorted(fs.find(base) if recursive else fs.ls(base, detail=False))
    except FileNotFoundError:
        raise SlideNotFoundError(f"{safe_url(prefix)}: no such prefix") from None

    def url_of(key: str) -> str:
        url = key if "://" in key else f"{proto}://{key}"
        return f"{url}?{query}" if query else url

    folders: dict[str, list[str]] = {}
    for k in keys:
        folders.setdefault(k.rsplit("/", 1)[0], []).append(k)
    out: list[str] = []
    for folder, names in folders.items():
        if sum(n.lower().endswith(".dcm") for n in names) > 1:
            out.append(url_of(join(folder, "")))
            continue
        out += [url_of(n) for n in names if n.lower().endswith(SLIDE_SUFFIXES)
                and not n.rsplit("/", 1)[-1].startswith(".")]
    if not out:
        raise SlideNotFoundError(f"{safe_url(prefix)}: no slides under this prefix "
                                 f"(looked for {', '.join(SLIDE_SUFFIXES)})")
    return sorted(out)


__all__ = ["find_remote_slides"]
