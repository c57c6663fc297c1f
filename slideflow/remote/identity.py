"""What a resume check compares for an input that may be a URL: a local file's name, size and
mtime (`slideflow.io.identity`); an object's name, size and ETag; a prefix's objects (a DICOM
series stored as several objects); a DICOMweb series' instance UIDs (a DICOM SOP instance UID
names fixed content). Nothing here holds a credential: names are URL base names."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ..io.identity import file_identity
from ..io.location import is_url
from .dicomweb import DicomWebSeries
from .fetch import RemoteObject
from .url import filesystem, scheme, url_basename, url_name


def url_identity(url: str) -> dict[str, Any]:
    """Identity of the slide at `url` (one metadata request for an object; a listing for a
    prefix; one QIDO-RS search for a DICOMweb series)."""
    if scheme(url).startswith("dicomweb"):
        uids = sorted(DicomWebSeries(url).instances())
        return {"name": url_name(url), "instances": len(uids),
                "sha256": hashlib.sha256("\n".join(uids).encode()).hexdigest()}
    if url.endswith("/"):
        fs, path = filesystem(url)
        fs.invalidate_cache(path.rstrip("/"))
        infos = sorted(fs.find(path.rstrip("/"), detail=True).items())
        tags = "\n".join(f"{k} {i.get('size')} {i.get('ETag') or i.get('etag')}"
                         for k, i in infos)
        return {"name": url_basename(url), "bytes": sum(int(i.get("size") or 0)
                                                        for _, i in infos),
                "files": len(infos), "sha256": hashlib.sha256(tags.encode()).hexdigest()}
    return RemoteObject(url).identity()


def input_identity(path: Any, local: Callable[[Any], Any] = file_identity) -> Any:
    """`local(path)` for a local file, `url_identity` for a URL, None for None."""
    if path is None:
        return None
    return url_identity(path) if is_url(path) else local(path)


__all__ = ["input_identity", "url_identity"]
