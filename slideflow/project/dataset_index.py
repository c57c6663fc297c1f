"""What a Dataset finds in its sources: slide files (local paths or URLs) and TFRecords by
slide name, scanned once and shared by a dataset and its filtered copies; the filter spelling
and the tile counts read from TFRecord indexes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import DatasetError, SlideflowError
from ..io.atomic import is_temporary
from ..io.tfrecord import TFRecord, read_index
from .sources import Source, load_sources

log = logging.getLogger("slideflow")


class Present(NamedTuple):
    """Where one slide of a dataset is: its source, its slide file (a URL stays a str; None
    when known only by a TFRecord) and its TFRecord at the dataset's geometry (or None)."""

    source: Source
    slide: Path | str | None
    tfrecord: Path | None


class SourceIndex:
    """Slide files and TFRecords found in the sources; slide folders (or URL prefixes, one
    listing each) are scanned once per index."""

    def __init__(self, sources: Mapping[str, Source]):
        self.sources = sources
        self._slides: dict[str, tuple[Source, Path | str]] | None = None

    def slides(self) -> dict[str, tuple[Source, Path | str]]:
        """{slide name: (source, slide file or URL)}; the first source wins a shared name."""
        if self._slides is None:
            found: dict[str, tuple[Source, Path | str]] = {}
            for src in self.sources.values():
                for name, path in src.slide_files().items():
                    if name in found:
                        log.warning("slide %r is in sources %s and %s; using the one in %s",
                                    name, found[name][0].name, src.name, found[name][0].name)
                        continue
                    found[name] = (src, path)
            self._slides = found
        return self._slides

    def tfrecords(self, label: str) -> dict[str, tuple[Source, Path]]:
        """TFRecords of one geometry, scanned each time (extraction adds files)."""
        found: dict[str, tuple[Source, Path]] = {}
        for src in self.sources.values():
            folder = src.tfrecords / label if src.tfrecords is not None else None
            if folder is None or not folder.is_dir():
                continue
            for p in sorted(folder.glob("*.tfrecords")):
                if is_temporary(p) or not p.is_file():
                    continue
                found.setdefault(p.name[: -len(".tfrecords")], (src, p))
        return found

    def present(self, names: Iterable[str], label: str | None, min_tiles: int = 0
                ) -> dict[str, Present]:
        """{slide: Present} for the `names` found as a slide file or a TFRecord of `label`;
        with `min_tiles`, only slides whose TFRecord holds at least that many tiles."""
        files = self.slides()
        tfrs = self.tfrecords(label) if label is not None else {}
        out: dict[str, Present] = {}
        for name in names:
            f, t = files.get(name), tfrs.get(name)
            if f is None and t is None:
                continue
            src = f[0] if f is not None else t[0]  # type: ignore[index]
            out[name] = Present(src, f[1] if f else None, t[1] if t else None)
        if min_tiles:
            counts = tile_counts({n: v.tfrecord for n, v in out.items()
                                  if v.tfrecord is not None})
            out = {n: v for n, v in out.items() if counts.get(n, 0) >= min_tiles}
        return out


def load_config(config: Any, root: str | os.PathLike | None) -> dict[str, Source]:
    """Sources from a datasets.json path, or a {name: Source or datasets.json entry} mapping."""
    if config is None:
        return {}
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.exists():
            raise DatasetError(f"{path}: datasets.json not found")
        return load_sources(path, root if root is not None else path.parent)
    out = {}
    for name, entry in config.items():
        out[name] = entry if isinstance(entry, Source) else Source.from_json(name, entry, root)
    return out


def norm_filters(filters: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """{column: [accepted values as stripped strings]} (a single value becomes a list)."""
    out: dict[str, list[str]] = {}
    for col, values in (filters or {}).items():
        if isinstance(values, (str, int, float)) or not isinstance(values, Iterable):
            values = [values]
        out[str(col)] = [str(v).strip() for v in values]
    return out


def tile_counts(tfrecords: Mapping[str, Path]) -> dict[str, int]:
    """{slide: tiles} from each TFRecord's index (rebuilt when missing; 0 when unreadable)."""
    out = {}
    for name, path in tfrecords.items():
        try:
            out[name] = len(read_index(path))
        except (FileNotFoundError, SlideflowError):
            try:
                out[name] = len(TFRecord(path))  # rebuilds a missing or unreadable index
            except SlideflowError as exc:
                log.warning("%s: cannot count tiles (%s)", path, exc)
                out[name] = 0
    return out
