"""What a slide is called: one rule for every output keyed by slide (annotations, TFRecords,
bags). Its own module so the `WSI` can use it without importing the package that lazily
exposes `WSI`."""

from __future__ import annotations

from pathlib import Path


def slide_name(path: str | Path) -> str:
    """Slide name used everywhere (annotations, TFRecords, bags): the file stem, the folder name
    for DICOM folders, and without '.ome' for OME-TIFF."""
    path = Path(path)
    if path.is_dir():
        return path.name
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
