"""The slide layer: readers, geometry, tissue QC, ROIs and the WSI object."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("slideflow")

#: file suffixes recognised as slides (DICOM folders are recognised by their .dcm files)
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif",
    ".qptiff", ".dcm", ".isyntax", ".czi",
)


def slide_name(path: str | Path) -> str:
    """Slide name used everywhere (annotations, TFRecords, bags): the file stem, the folder name
    for DICOM folders, and without '.ome' for OME-TIFF; a URL's last component likewise."""
    from ..remote.url import is_url, url_name

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


def _dicom_folder(entries: list[Path]) -> bool:
    """The one rule for a DICOM folder slide, given a folder's entries: two or more .dcm
    instances and no other slide file. One .dcm (a multi-frame file) is a slide by itself, so a
    folder holding one next to other slides is a folder of slides."""
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    dcm = sum(p.suffix.lower() == ".dcm" for p in files)
    others = sum(p.suffix.lower() in SLIDE_SUFFIXES and p.suffix.lower() != ".dcm" for p in files)
    return dcm > 1 and not others


def is_dicom_folder(path: str | Path) -> bool:
    """True for a folder that is one DICOM WSI (see `_dicom_folder`)."""
    path = Path(path)
    try:
        return path.is_dir() and _dicom_folder(list(path.iterdir()))
    except OSError:
        return False


def is_slide(path: str | Path) -> bool:
    """True for a regular file with a slide suffix or a DICOM folder (`is_dicom_folder`).

    FIFOs, sockets and devices are never slides: opening one could block forever.
    """
    path = Path(path)
    if path.is_dir():
        return is_dicom_folder(path)
    return path.suffix.lower() in SLIDE_SUFFIXES and path.is_file()


def expand_slides(paths: Iterable[str | Path], recursive: bool = True) -> list[Path]:
    """Slide files and DICOM folders given, plus the slides inside the other folders given
    (all levels when `recursive`, else the folder's own entries). Every entry point that takes
    "slides or folders of slides" (CLI commands, API) lists them here."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not is_dicom_folder(p):
            out.extend(find_slides(p) if recursive else
                       sorted(c for c in p.iterdir() if not c.name.startswith(".")
                              and is_slide(c)))
        else:
            out.append(p)
    return out


def find_slides(folder: str | Path) -> list[Path]:
    """Slides under `folder`, recursively, sorted; a DICOM folder counts as one slide.

    Linked folders are followed once: a folder already visited (a link cycle, or two links to
    one folder) is skipped with a warning. Entries that are not regular files (FIFOs, sockets,
    broken links) are skipped with a warning, never opened.
    """
    folder = Path(folder)
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def walk(d: Path) -> None:
        try:
            st = d.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            log.warning("%s: folder already searched (link cycle or duplicate link); skipped", d)
            return
        seen.add((st.st_dev, st.st_ino))
        entries = sorted(d.iterdir())
        if _dicom_folder(entries):  # a multi-instance DICOM WSI: the folder is the slide
            found.append(d)
            return
        for p in entries:
            if p.is_dir():
                walk(p)
            elif p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith("."):
                if p.is_file():
                    found.append(p)
                else:
                    log.warning("%s: not a regular file (FIFO, socket, device or broken link); "
                                "skipped", p)

    if folder.is_dir():
        walk(folder)
    return found


def __getattr__(name: str):
    if name == "WSI":
        from .wsi import WSI

        return WSI
    raise AttributeError(name)


__all__ = ["SLIDE_SUFFIXES", "WSI", "expand_slides", "find_slides", "is_dicom_folder",
           "is_slide", "slide_name"]
