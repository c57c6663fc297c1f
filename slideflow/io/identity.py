"""Source identity for resume: what a reused output was made from.

A bag or TFRecord is reused only when its source is the same file: same size and mtime_ns for
a slide (a replaced slide with the same name is redone), plus the sha256 of the extraction
sidecar and index for a TFRecord (a re-extracted TFRecord is redone even when its size is
unchanged). `promised_records` is how many records a TFRecord must yield: a file truncated
exactly at a record boundary still parses, and must not give a short bag reported done.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".extract.json"  # written by tile extraction beside <slide>.tfrecords
INDEX_SUFFIX = ".index.npz"


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """{name, bytes, mtime_ns} of a file; a DICOM folder sums its files' sizes and takes the
    newest mtime."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        stats = [p.stat() for p in files]
        return {"name": path.name, "bytes": sum(s.st_size for s in stats),
                "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
                "files": len(files)}
    st = path.stat()
    return {"name": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def file_digest(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """{name, sha256} of a small input whose content changes an output (a tissue mask, an ROI
    file); None for no file. A missing file raises (the job then fails naming it)."""
    if path is None:
        return None
    path = Path(path)
    return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


#: `content_check` reads SAMPLE_BLOCKS blocks of SAMPLE_BYTES, evenly spaced from the first
#: byte to the last (a file up to 256 KiB is hashed whole)
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 1 << 14


def content_check(path: str | os.PathLike) -> dict[str, Any]:
    """{bytes, sample_sha256} of a finished output: its size and the sha256 of 16 blocks of
    16 KiB spread over it, first and last included. Recorded in an output's metadata when it is
    written and compared before it is reused, so a truncated or overwritten file is never taken
    for finished; it costs at most 256 KiB of reads whatever the size."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
            h.update(fh.read())
        else:
            step = (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
            for i in range(SAMPLE_BLOCKS):
                fh.seek(round(i * step))
                h.update(fh.read(SAMPLE_BYTES))
    return {"bytes": size, "sample_sha256": h.hexdigest()}


def content_matches(path: str | os.PathLike, recorded: Any) -> bool:
    """Whether `path` still has the `content_check` recorded when it was written (False when
    nothing was recorded: an output of an older version is remade, not trusted)."""
    if not isinstance(recorded, dict):
        return False
    try:
        if Path(path).stat().st_size != recorded.get("bytes"):
            return False
        return content_check(path) == recorded
    except OSError:
        return False


def _beside(tfrecord: Path, suffix: str) -> Path:
    name = tfrecord.name
    stem = name[: -len(".tfrecords")] if name.endswith(".tfrecords") else tfrecord.stem
    return tfrecord.with_name(stem + suffix)


def tfrecord_identity(tfrecord: str | os.PathLike) -> dict[str, Any]:
    """`file_identity` of a TFRecord plus the sha256 of its sidecar and index (None if absent)."""
    tfrecord = Path(tfrecord)
    return {**file_identity(tfrecord),
            "sidecar_sha256": _sha256(_beside(tfrecord, SIDECAR_SUFFIX)),
            "index_sha256": _sha256(_beside(tfrecord, INDEX_SUFFIX))}


def promised_records(tfrecord: str | os.PathLike) -> tuple[int, str] | None:
    """(records the TFRecord should hold, who says so): its extraction sidecar, else its index;
    None when neither is there (a foreign TFRecord: nothing to check against)."""
    import json

    import numpy as np

    tfrecord = Path(tfrecord)
    side = _beside(tfrecord, SIDECAR_SUFFIX)
    try:
        meta = json.loads(side.read_text())
        if isinstance(meta, dict) and meta.get("complete") and meta.get("tiles") is not None:
            return int(meta["tiles"]), side.name
    except (OSError, ValueError, TypeError):
        pass
    index = _beside(tfrecord, INDEX_SUFFIX)
    try:
        with np.load(index, allow_pickle=False) as z:
            return int(len(z["arr_0"])), index.name
    except Exception:  # missing or unreadable index: nothing promised
        return None
