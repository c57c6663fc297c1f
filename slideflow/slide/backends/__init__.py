"""Backend selection: `open_reader(path, backend='auto')` (local files in `local.py`, URLs
through `slide.remote_open`)."""

from __future__ import annotations

from pathlib import Path

from ...remote.url import is_url
from .. import remote_open  # a module: remote_open imports this package's readers
from .base import SlideReader
from .local import AUTO_ORDER, BACKENDS, IMAGE_SUFFIXES, open_local


def open_reader(path: str | Path, backend: str = "auto") -> SlideReader:
    """Open `path` with `backend`, or with the first backend that can ('auto').

    DICOM goes to wsidicom first (openslide cannot decode every photometric interpretation).
    A URL (str) is read in place or through the slide cache (`slideflow.slide.remote_open`).
    """
    if is_url(path):
        return remote_open.open_url(path, backend)
    return open_local(path, backend)


__all__ = ["AUTO_ORDER", "BACKENDS", "IMAGE_SUFFIXES", "SlideReader", "open_reader"]
