"""Only regular files (or DICOM folders) are opened; folder walks never loop."""

from __future__ import annotations

import os
import shutil

import pytest

import slideflow as sf
from slideflow.errors import UnsupportedSlideError
from slideflow.slide import find_slides, is_slide
from slideflow.slide.backends import open_reader

from .cases import hostile
from .test_arguments import _returns_within
from conftest import CMU


@hostile("fifo-named-svs", "a FIFO named slide.svs (given directly and inside a folder)",
         "UnsupportedSlideError 'not a regular file' at once; folder walks skip it with a "
         "warning (blocked forever in format detection)")
def test_fifo_is_never_opened(tmp_path, caplog):
    fifo = tmp_path / "slide.svs"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedSlideError, match="not a regular file"):
        _returns_within(lambda: open_reader(fifo))
    with pytest.raises(UnsupportedSlideError):
        _returns_within(lambda: sf.WSI(fifo, 256, 128))
    shutil.copy(CMU, tmp_path / "real.svs")
    assert _returns_within(lambda: find_slides(tmp_path)) == [tmp_path / "real.svs"]
    assert not is_slide(fifo)
    assert "not a regular file" in caplog.text


@hostile("symlink-cycle", "a slide folder holding a link to itself (loop -> ..)",
         "walk ends; each slide found once; a warning names the skipped link")
def test_link_cycle(tmp_path, caplog):
    root = tmp_path / "slides"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "A.svs").symlink_to(CMU)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(root / "sub", target_is_directory=True)
    found = _returns_within(lambda: find_slides(root))
    assert len(found) == 1 and found[0].name == "A.svs"
    assert "already searched" in caplog.text


@hostile("broken-symlink", "a dangling link named B.svs", "skipped by folder walks with a "
         "warning; opening it directly says 'no such slide file'")
def test_broken_link(tmp_path):
    (tmp_path / "B.svs").symlink_to(tmp_path / "gone.svs")
    assert find_slides(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no such slide"):
        open_reader(tmp_path / "B.svs")


@hostile("directory-named-svs", "an empty folder named C.svs", "not a slide; opening it says "
         "no backend can open it")
def test_directory_named_like_a_slide(tmp_path):
    (tmp_path / "C.svs").mkdir()
    assert find_slides(tmp_path) == [] and not is_slide(tmp_path / "C.svs")
    with pytest.raises(UnsupportedSlideError):
        open_reader(tmp_path / "C.svs")
