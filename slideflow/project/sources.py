"""Dataset sources (`datasets.json`) and slide discovery.

A source is a named group of folders, in Slideflow's layout::

    {"MySource": {"slides": "/data/slides", "roi": "/data/roi",
                  "tiles": "/project/tiles/MySource", "tfrecords": "/project/tfrecords/MySource"}}

Paths are written absolute (as Slideflow does). On reading, a path that starts with `$ROOT/` or
`./`, or any relative path, is taken relative to the project root. Slides are found
recursively by name: the file stem for files of any supported format, the folder name for a
folder of DICOM instances (`slideflow.slide.find_slides`).

`slides` may also be a URL prefix: `s3://bucket/prefix/`, `gs://...`, an `https://` folder
whose page links its files, or a DICOMweb service (`dicomweb://host/path`, optionally
`?study=UID`): its slides are listed there (`slideflow.slide.remote_open`). The other folders
stay local (outputs are written there). A URL is stored without credentials (`safe_url`);
`$VAR` / `${VAR}` in it is read from the environment when the slides are listed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ProjectError
from ..io.atomic import write_json_atomic
from ..io.location import is_url
from ..remote.url import expand_url, safe_url
from ..slide import find_slides, slide_name
from ..slide.remote_list import find_remote_slides

log = logging.getLogger("slideflow")

#: keys of one datasets.json entry, in Slideflow's spelling
SOURCE_KEYS = ("slides", "roi", "tiles", "tfrecords")
#: ROI file suffixes looked for in a source's roi folder, in order of preference
ROI_SUFFIXES = (".csv", ".geojson", ".json")


def resolve_path(value: str | os.PathLike | None, root: str | os.PathLike | None,
                 what: str = "this path") -> Path | None:
    """A datasets.json / settings.json path as an absolute Path (None stays None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if is_url(value):
        raise ProjectError(f"{what} {safe_url(str(value))!r}: a URL is taken only for a "
                           "source's slides; outputs and ROIs stay in local folders")
    text = str(value)
    if text.startswith("$ROOT"):
        text = str(root if root is not None else ".") + text[len("$ROOT"):]
    path = Path(os.path.expanduser(text))
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    return Path(os.path.normpath(path.absolute()))


def resolve_slides(value: str | os.PathLike | None, root: str | os.PathLike | None
                   ) -> Path | str | None:
    """A source's `slides`: a URL stays the string given (credentials and `$VAR`s
    included, in memory only), anything else as `resolve_path`."""
    if is_url(value):
        return str(value).strip()
    return resolve_path(value, root, "slides")


@dataclass
class Source:
    """One dataset source: where its slides, ROIs, loose tiles and TFRecords live."""

    name: str
    slides: Path | str | None = None  # a URL prefix stays a str
    roi: Path | None = None
    tiles: Path | None = None
    tfrecords: Path | None = None

    @classmethod
    def from_json(cls, name: str, entry: dict[str, Any], root: str | os.PathLike | None = None
                  ) -> Source:
        if not isinstance(entry, dict):
            raise ProjectError(f"source {name!r}: expected an object with keys "
                               f"{', '.join(SOURCE_KEYS)}, got {type(entry).__name__}")
        return cls(name, resolve_slides(entry.get("slides"), root),
                   *(resolve_path(entry.get(k), root, f"source {name!r}: {k}")
                     for k in SOURCE_KEYS[1:]))

    @property
    def remote(self) -> bool:
        """Whether the slides are listed at a URL."""
        return is_url(self.slides)

    def to_json(self, warn: bool = True) -> dict[str, str]:
        """The datasets.json entry (absolute paths; unset folders are left out; a URL
        without its credentials)."""
        out = {k: str(getattr(self, k)) for k in SOURCE_KEYS if getattr(self, k) is not None}
        if self.remote:
            out["slides"] = safe_url(str(self.slides))
            if warn and out["slides"] != self.slides:
                log.warning("source %s: datasets.json stores the slides URL without its "
                            "credentials (%s); this session uses the URL as given; for a later "
                            "session give them through the environment (a profile, or $VAR in "
                            "the URL)", self.name,
                            out["slides"])
        return out

    def slide_files(self) -> dict[str, Path | str]:
        """{slide name: path or URL} of the slides under `slides` (empty when unset or a
        local folder is missing)."""
        if self.slides is None:
            return {}
        if self.remote:
            return discover_remote_slides(str(self.slides))
        return discover_slides(self.slides)  # type: ignore[return-value]

    def roi_file(self, slide: str) -> Path | None:
        """`<roi>/<slide>.csv` (or `.geojson` / `.json`) when it exists."""
        if self.roi is None:
            return None
        for suffix in ROI_SUFFIXES:
            path = self.roi / f"{slide}{suffix}"
            if path.is_file():
                return path
        return None


def discover_slides(folder: str | os.PathLike) -> dict[str, Path]:
    """{slide name: path} under `folder`, recursively, in sorted path order.

    When two files share a name (e.g. `A.svs` and `sub/A.ndpi`) the first in sorted order is
    used and a warning names both.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise ProjectError(f"{folder}: the slides path of a source must be a folder")
        log.warning("%s: slide folder does not exist", folder)
        return {}
    found: dict[str, Path] = {}
    for path in find_slides(folder):
        name = slide_name(path)
        if name in found:
            log.warning("two slides named %r: %s and %s; using the first (rename one to use "
                        "both)", name, found[name], path)
            continue
        found[name] = path
    return found


def discover_remote_slides(url: str) -> dict[str, str]:
    """{slide name: URL} of the slides under a URL prefix or DICOMweb service, recursively.
    Two slides with one name: the first in sorted order is used (as for folders)."""
    found: dict[str, str] = {}
    for u in find_remote_slides(expand_url(url), recursive=True):
        name = slide_name(u)
        if name in found:
            log.warning("two slides named %r: %s and %s; using the first", name,
                        safe_url(found[name]), safe_url(u))
            continue
        found[name] = u
    return found


def load_sources(path: str | os.PathLike, root: str | os.PathLike | None = None
                 ) -> dict[str, Source]:
    """Every source in a datasets.json file ({} when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProjectError(f"{path}: not a readable datasets.json ({exc})") from None
    if not isinstance(data, dict):
        raise ProjectError(f"{path}: expected a JSON object mapping source names to folders")
    return {name: Source.from_json(name, entry, root) for name, entry in data.items()}


def save_source(path: str | os.PathLike, source: Source) -> None:
    """Add or replace one source in a datasets.json file, keeping the others untouched.

    The file may be shared between projects, so unknown keys and other sources are preserved.
    """
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ProjectError(f"{path}: not a readable datasets.json ({exc}); fix or remove "
                               "it first") from None
    data[source.name] = {**data.get(source.name, {}), **source.to_json()}
    write_json_atomic(path, data)
