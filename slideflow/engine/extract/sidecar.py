"""The extraction contract on disk: options -> request, the `.extract.json` sidecar, resume.

Every slide has a sidecar `<slide>.extract.json`. It is written (atomically) as
`complete: false` before a slide's TFRecord is touched and rewritten with the results LAST,
after the TFRecord and its index are in place. `skip_extracted` reuses a TFRecord only when its
sidecar is complete and its recorded request equals the current one; otherwise the slide is
redone and the log says why. A TFRecord with no sidecar at all was made by another tool
(e.g. Slideflow itself) and is kept as is. So a killed run never leaves a TFRecord that is
taken for finished, and the rerun completes it with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import SlideflowError
from ...io.identity import SIDECAR_SUFFIX, content_matches
from ...io.locks import clean_stale_temps
from ...io.tfrecord import build_index, read_index
from ...norm import resolve
from ...remote.identity import input_identity
from ...validate import optional_positive_int, positive_int
from ..selection import TileSelection

FORMAT_VERSION = 1


def sidecar_path(tfrecord: str | os.PathLike) -> Path:
    """`<dir>/<slide>.extract.json` for `<dir>/<slide>.tfrecords`."""
    tfrecord = Path(tfrecord)
    name = tfrecord.name[: -len(".tfrecords")] if tfrecord.name.endswith(".tfrecords") \
        else tfrecord.stem
    return tfrecord.with_name(name + SIDECAR_SUFFIX)


def read_sidecar(tfrecord: str | os.PathLike) -> dict[str, Any] | None:
    """The extraction sidecar of a TFRecord, or None when absent or unreadable."""
    try:
        return json.loads(sidecar_path(tfrecord).read_text())
    except (OSError, ValueError):
        return None


def is_incomplete(tfrecord: str | os.PathLike) -> bool:
    """True when the sidecar says an extraction of this slide started and did not finish."""
    meta = read_sidecar(tfrecord)
    return meta is not None and not meta.get("complete", False)

@dataclass
class ExtractOptions(TileSelection):
    """Everything that decides which tiles are written and how (plus how fast)."""

    img_format: str = "jpg"
    jpeg_quality: int = 100
    normalizer: Any = None
    save_tiles: bool = False
    max_tiles: int | None = None
    shuffle: bool = False
    seed: int = 0
    skip_extracted: bool = True
    batch_size: int = 64
    report: bool = True
    #: write stored JPEG tiles as they are where output tiles coincide with them
    passthrough: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        fmt = str(self.img_format).lower()
        if fmt not in ("jpg", "jpeg", "png"):
            raise ValueError(f"img_format must be 'jpg' or 'png', got {self.img_format!r}")
        self.img_format = "jpg" if fmt == "jpeg" else fmt
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        self.max_tiles = optional_positive_int(self.max_tiles, "max_tiles")
        self.batch_size = positive_int(self.batch_size, "batch_size")
        self.normalizer = resolve(self.normalizer)

    def passthrough_blocker(self) -> str | None:
        """Why these options rule passthrough out (None: the slide decides)."""
        if not self.passthrough:
            return "passthrough=False"
        if self.img_format != "jpg":
            return f"img_format={self.img_format!r}"
        if self.normalizer is not None:
            return "a stain normaliser is set"
        return None

    def normalizer_config(self) -> Any:
        n = self.normalizer
        if n is None:
            return None
        if hasattr(n, "to_config"):
            return n.to_config()
        return {"class": type(n).__name__}

    def request(self, tile_px: int, tile_um: Any, slide_path: Path | str, mpp: float | None,
                roi: Path | None) -> dict[str, Any]:
        """What a finished TFRecord must have been made with to be reused (JSON-normalised)."""
        req = {
            "format_version": FORMAT_VERSION,
            "tile_px": int(tile_px), "tile_um": tile_um, "stride_div": int(self.stride_div),
            "use_edge_tiles": bool(self.use_edge_tiles), "grid_rule": self.grid_rule,
            "backend": self.backend,
            "mpp_override": mpp,
            **self.request_record(),
            "roi_method": self.roi_method, "roi_filter_method": self.roi_filter_method,
            "roi_file": _file_digest(roi) if roi is not None else None,
            "img_format": self.img_format,
            "jpeg_quality": int(self.jpeg_quality) if self.img_format == "jpg" else None,
            "normalizer": self.normalizer_config(),
            "passthrough": self.passthrough_blocker() is None,
            "max_tiles": self.max_tiles, "shuffle": bool(self.shuffle),
            "seed": self.seed if (self.shuffle or self.max_tiles) else None,
            "slide_file": input_identity(slide_path),  # a replaced slide is redone
        }
        return json.loads(json.dumps(req, sort_keys=True, default=str))


def _file_digest(path: Path) -> dict[str, Any]:
    return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

@dataclass
class ExtractJob:
    """One slide to extract into `outdir` (the TFRecord label folder)."""

    name: str
    slide_path: Path
    outdir: Path
    tiles_dir: Path | None = None  # loose tiles go to tiles_dir/<name>/
    roi: Path | None = None
    mpp: float | None = None
    mask: Path | None = None  # a tissue-mask image replacing the QC method (manifest mask_path)

    @property
    def tfrecord(self) -> Path:
        return self.outdir / f"{self.name}.tfrecords"

def check_existing(job: ExtractJob, request: dict[str, Any], save_tiles: bool
                   ) -> tuple[bool, str]:
    """(reuse?, why) for a slide's existing outputs."""
    tfr = job.tfrecord
    meta = read_sidecar(tfr)
    if not tfr.exists():
        interrupted = meta is not None and not meta.get("complete")
        return False, "a previous extraction was interrupted" if interrupted else \
            "not extracted yet"
    if meta is None:
        if sidecar_path(tfr).exists():
            return False, f"{sidecar_path(tfr).name} is unreadable"
        return True, ("TFRecord has no .extract.json (made by another tool?), kept as is; "
                      "pass skip_extracted=False to re-extract it")
    if not meta.get("complete"):
        return False, "a previous extraction was interrupted"
    if meta.get("request") != request:
        old = meta.get("request") or {}
        keys = sorted(k for k in set(old) | set(request) if old.get(k) != request.get(k))
        return False, f"settings changed ({', '.join(keys)})"
    if tfr.stat().st_size != meta.get("tfrecord_bytes"):
        return False, "the TFRecord's size differs from the recorded one"
    if "tfrecord_content" in meta and not content_matches(tfr, meta["tfrecord_content"]):
        return False, "the TFRecord's content differs from the recorded digest (overwritten?)"
    try:
        n = len(read_index(tfr))
    except (FileNotFoundError, SlideflowError):
        try:
            n = len(build_index(tfr))
        except SlideflowError as exc:
            return False, f"the TFRecord is corrupt ({exc})"
    if n != meta.get("tiles"):
        return False, f"the index holds {n} records, the sidecar {meta.get('tiles')}"
    if save_tiles and job.tiles_dir is not None and not (job.tiles_dir / job.name).is_dir():
        return False, "loose tiles were requested and are missing"
    return True, "already extracted with the same settings"


def remove_leftovers(job: ExtractJob) -> list[Path]:
    """Remove temporary files of dead runs for this slide (never those of a live process);
    returns what was removed."""
    removed = clean_stale_temps(job.outdir, job.name)
    if job.tiles_dir is not None:
        removed += clean_stale_temps(job.tiles_dir, job.name)
    return removed
