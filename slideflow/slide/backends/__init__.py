"""Backend selection: `open_reader(path, backend='auto')`."""

from __future__ import annotations

import importlib
from pathlib import Path

from ...errors import SlideNotFoundError, UnsupportedSlideError
from ...remote.url import is_url
from .base import SlideReader

#: backend name -> (module, class); 'auto' tries AUTO_ORDER (vips and cucim: only when asked)
BACKENDS: dict[str, tuple[str, str]] = {
    "openslide": ("slideflow.slide.backends.openslide_backend", "OpenSlideReader"),
    "tiffslide": ("slideflow.slide.backends.tiffslide_backend", "TiffSlideReader"),
    "dicom": ("slideflow.slide.backends.dicom_backend", "DicomReader"),
    "vips": ("slideflow.slide.backends.vips_backend", "VipsReader"),
    "image": ("slideflow.slide.backends.image_backend", "ImageReader"),
    "cucim": ("slideflow.slide.backends.cucim_backend", "CuCIMReader"),
}
AUTO_ORDER = ("openslide", "tiffslide", "dicom", "image")
#: plain image formats: opened by the 'image' backend only (no WSI library reads them)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _is_dicom(path: Path) -> bool:
    if path.is_dir():
        return any(p.suffix.lower() == ".dcm" for p in path.iterdir())
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def open_reader(path: str | Path, backend: str = "auto") -> SlideReader:
    """Open `path` with `backend`, or with the first backend that can ('auto').

    DICOM goes to wsidicom first (openslide cannot decode every photometric interpretation).
    A URL (str) is read in place or through the slide cache (`slideflow.slide.remote_open`).
    """
    if is_url(path):
        from ..remote_open import open_url

        return open_url(path, backend)
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(f"{path}: no such slide file or folder")
    if not (path.is_file() or path.is_dir()):  # a FIFO would block the format probe forever
        raise UnsupportedSlideError(f"{path}: not a regular file or a DICOM folder (a FIFO, "
                                    "socket or device); copy the slide to a regular file")
    if backend != "auto":
        if backend not in BACKENDS:
            raise UnsupportedSlideError(
                f"{path}: unknown backend {backend!r}; choose one of {sorted(BACKENDS)} or 'auto'"
            )
        return _open_with(path, backend, explicit=True)
    if _is_dicom(path):
        order: tuple[str, ...] = ("dicom", "openslide")
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        order = ("image",)
    else:
        order = AUTO_ORDER
    errors = []
    for name in order:
        try:
            return _open_with(path, name, explicit=False)
        except UnsupportedSlideError as exc:
            errors.append(f"{name}: {exc.__cause__ or exc}")
    raise UnsupportedSlideError(
        f"{path}: no backend could open this file ({'; '.join(errors)}). Check that it is a "
        "complete whole-slide image (truncated copies fail here) in a supported format."
    )


def _open_with(path: Path, name: str, explicit: bool) -> SlideReader:
    module_name, cls_name = BACKENDS[name]
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except ImportError as exc:
        raise UnsupportedSlideError(
            f"{path}: backend {name!r} is not installed ({exc}); install it or use backend='auto'"
        ) from exc
    try:
        return cls(path)
    except Exception as exc:  # each library raises its own types
        raise UnsupportedSlideError(f"{path}: backend {name!r} cannot open it: {exc}") from exc


__all__ = ["BACKENDS", "SlideReader", "open_reader"]
