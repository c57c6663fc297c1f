"""What a slide is called: the suffixes that make a file a slide, and one name rule for every
output keyed by slide (annotations, TFRecords, bags). Its own module so `WSI` and the URL
opener use them without importing the package that lazily exposes `WSI`."""

from __future__ import annotations

from pathlib import Path

from ..remote.url import is_url, url_name

#: file suffixes recognised as slides (DICOM folders are recognised by their .dcm files)
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif",
    ".qptiff", ".dcm", ".isyntax", ".czi",
)


def slide_name(path: str | Path) -> str:
    """Slide name used everywhere (annotations, TFRecords, bags): the file stem, the folder name
    for DICOM folders, and without '.ome' for OME-TIFF; a URL's last component likewise."""
    if is_url(path):
        return url_name(path)
    path = Path(path)
    if path.is_dir():
        return path.name
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
