"""The output formats, as one table: one entry per format names its module, file suffix,
layout and the outputs it can hold (tile-feature bags, slide embeddings).

Bags (`io.bags`), slide embeddings (`engine.slide_embedding_outputs`) and the CLI's ``--format``
help and checks all read this table, so a new format is one module plus one entry here. The
table is plain data: a format's module (torch, h5py or zarr inside) is imported only when a
file of that format is written or read (`OutputFormat.impl`).

A format module provides, for bags: ``open_sink(path, *, num_features, patch_size_level0,
meta, attrs, encoder, chunk_rows, expected_rows)`` (a sink with ``append``, ``close``,
``abort``, ``rows``), ``read(path, *, patch_size_level0, encoder, coords_scale) -> Bag`` and
``read_meta(path, encoder) -> dict | None``; for slide embeddings: ``write_embedding(dest,
encoder, vec, meta)``, ``read_embedding(path, encoder)`` and ``has_embedding(dest, encoder)``.
A layout stored inside another format's files (`within`) also provides ``recognises(path)``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

BAGS = "bags"
SLIDE_EMBEDDINGS = "slide_embeddings"


@dataclass(frozen=True)
class OutputFormat:
    """One output format (see the module doc for what its module provides)."""

    name: str
    #: suffix of the file (or folder) written
    suffix: str
    #: module of `slideflow.io` that writes and reads it
    module: str
    #: what a file holds, in one line (docs, CLI help)
    layout: str
    #: which outputs it can hold: BAGS, SLIDE_EMBEDDINGS
    outputs: frozenset[str]
    #: other spellings of the name (``format='hdf5'``)
    aliases: tuple[str, ...] = ()
    #: further suffixes recognised when reading
    read_suffixes: tuple[str, ...] = ()
    #: files live in this subfolder of the output folder
    subdir: str | None = None
    #: a layout inside the files of that format, told apart when a file is read
    within: str | None = None
    #: several encoders' features may share one file (``encoder=``)
    multi_encoder: bool = False

    @property
    def impl(self) -> ModuleType:
        """The format's module (imported on first use)."""
        return importlib.import_module(f"{__package__}.{self.module}")

    def path(self, outdir: str | os.PathLike, slide: str) -> Path:
        """Where this format keeps `slide`'s output in `outdir`."""
        folder = Path(outdir) / self.subdir if self.subdir else Path(outdir)
        return folder / f"{slide}{self.suffix}"


TABLE: tuple[OutputFormat, ...] = (
    OutputFormat("pt", ".pt", "pt", "Slideflow: a torch tensor; <slide>.index.npz holds tile "
                 "centres", frozenset({BAGS, SLIDE_EMBEDDINGS}), aliases=("torch",)),
    OutputFormat("h5", ".h5", "h5", "CLAM/TRIDENT: features, coords (top-left) and attrs; "
                 "slide_features/<encoder>", frozenset({BAGS, SLIDE_EMBEDDINGS}),
                 aliases=("hdf5",), read_suffixes=(".hdf5",), multi_encoder=True),
    OutputFormat("atlaspatch", ".h5", "atlaspatch", "AtlasPatch: patches/<slide>.h5, coords "
                 "(N, 5), features/<encoder>", frozenset({BAGS}), subdir="patches",
                 within="h5", multi_encoder=True),
    OutputFormat("zarr", ".zarr", "zarr_store", "TIAToolbox: probabilities, coordinates "
                 "(x0, y0, x1, y1)", frozenset({BAGS})),
)

_BY_NAME = {f.name: f for f in TABLE}
_SPELLINGS = {**{a: f.name for f in TABLE for a in f.aliases}, **{f.name: f.name for f in TABLE}}


def names(output: str) -> tuple[str, ...]:
    """The formats that can hold `output` (BAGS or SLIDE_EMBEDDINGS), in table order."""
    if output not in (BAGS, SLIDE_EMBEDDINGS):
        raise ValueError(f"unknown output {output!r}; use {BAGS!r} or {SLIDE_EMBEDDINGS!r}")
    return tuple(f.name for f in TABLE if output in f.outputs)


def choices_text(output: str) -> str:
    """'pt, h5, atlaspatch or zarr': the formats of `output`, for help and messages."""
    n = names(output)
    return n[0] if len(n) == 1 else f"{', '.join(n[:-1])} or {n[-1]}"


def canonical(fmt: str) -> str | None:
    """The table name of a spelling ('hdf5' -> 'h5', '.PT' -> 'pt'), or None."""
    return _SPELLINGS.get(str(fmt).lower().lstrip("."))


def get(name: str) -> OutputFormat:
    """The entry of a table name (see `canonical` for other spellings)."""
    return _BY_NAME[name]


def suffixes() -> dict[str, str]:
    """{suffix: format} of the files a suffix alone identifies (layouts `within` another
    format share its suffix and are recognised when read)."""
    return {s: f.name for f in TABLE if f.within is None for s in (f.suffix, *f.read_suffixes)}


def layout_of(path: str | os.PathLike, fmt: str) -> OutputFormat:
    """The entry that reads `path`, a file of format `fmt` (by its suffix): a layout within
    `fmt` whose module recognises the file, else `fmt` itself."""
    for entry in TABLE:
        if entry.within == fmt and entry.impl.recognises(path):
            return entry
    return get(fmt)
