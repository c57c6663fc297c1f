"""The output-format table (`slideflow.io.formats`) drives bags, slide embeddings and the CLI:
every entry's module provides what its outputs need, every bag format writes and reads back
exactly, every slide-embedding format round-trips through the embedding writer, and the CLI's
--format help and checks list exactly the table's names."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from slideflow.cli import app
from slideflow.io import base, formats
from slideflow.io.bags import list_bags, read_bag, read_bag_meta, write_bag

BAG_API = ("open_sink", "read", "read_meta")
EMBEDDING_API = ("write_embedding", "read_embedding", "has_embedding")
runner = CliRunner()


def _rows(n: int = 37, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    features = rng.standard_normal((n, d)).astype(np.float32)
    coords = np.stack([np.arange(n) * 448, np.arange(n) % 3 * 448], axis=1).astype(np.int64)
    return features, coords


@pytest.mark.parametrize("entry", formats.TABLE, ids=lambda e: e.name)
def test_every_module_provides_its_outputs(entry):
    mod = entry.impl
    for name in BAG_API:
        assert callable(getattr(mod, name, None)) == (formats.BAGS in entry.outputs), name
    for name in EMBEDDING_API:
        assert callable(getattr(mod, name, None)) == (
            formats.SLIDE_EMBEDDINGS in entry.outputs), name
    if entry.within is not None:
        assert callable(getattr(mod, "recognises", None)) and entry.within in formats.suffixes(
        ).values()


def test_names_and_suffixes_come_from_the_table():
    assert formats.names(formats.BAGS) == ("pt", "h5", "atlaspatch", "zarr")
    assert formats.names(formats.SLIDE_EMBEDDINGS) == ("pt", "h5")
    assert formats.choices_text(formats.BAGS) == "pt, h5, atlaspatch or zarr"
    assert base.FORMATS == {f.name: f.suffix for f in formats.TABLE}
    assert base.BAG_SUFFIXES == {".pt": "pt", ".h5": "h5", ".hdf5": "h5", ".zarr": "zarr"}
    assert base.bag_format("", "HDF5") == "h5" and base.bag_format("", ".torch") == "pt"
    with pytest.raises(ValueError, match="unknown bag format 'npz'"):
        base.bag_format("", "npz")
    with pytest.raises(ValueError, match="unknown output"):
        formats.names("tiles")


@pytest.mark.parametrize("fmt", formats.names(formats.BAGS))
def test_every_bag_format_round_trips(fmt, tmp_path):
    features, coords = _rows()
    entry = formats.get(fmt)
    path = entry.path(tmp_path, "slide-1")
    meta = {"extractor": "toy", "tile_px": 224}
    written = write_bag(path, features, coords, fmt, patch_size_level0=448, meta=meta)
    assert written == base.bag_path(tmp_path, "slide-1", fmt) == path
    assert path.suffix == entry.suffix and (entry.subdir is None or path.parent.name ==
                                            entry.subdir)
    bag = read_bag(path, encoder="toy" if fmt == "atlaspatch" else None)
    np.testing.assert_array_equal(bag.features, features)
    np.testing.assert_array_equal(bag.coords, coords)
    assert bag.patch_size_level0 == 448
    got = read_bag_meta(tmp_path, "slide-1", fmt, encoder="toy" if fmt == "atlaspatch" else None)
    assert {k: got[k] for k in meta} == meta
    assert list_bags(tmp_path, fmt) == [path] and list_bags(tmp_path) == [path]
    if entry.within is not None:  # read by layout, from a suffix shared with another format
        assert formats.layout_of(path, base.bag_format(path)) is entry
    if not entry.multi_encoder:
        with pytest.raises(ValueError, match="is an h5/atlaspatch option"):
            write_bag(path, features, coords, fmt, patch_size_level0=448, encoder="x")


@pytest.mark.parametrize("fmt", formats.names(formats.SLIDE_EMBEDDINGS))
def test_every_slide_embedding_format_round_trips(fmt, tmp_path):
    from slideflow.engine.slide_embedding_outputs import (
        FORMATS,
        embed_bag_folder,
        embedding_exists,
        read_slide_embedding,
    )
    from slideflow.model.slide_encoders import build_slide_encoder

    assert FORMATS == formats.names(formats.SLIDE_EMBEDDINGS)
    features, coords = _rows()
    bags = tmp_path / "bags"
    write_bag(bags / "s1.pt", features, coords, patch_size_level0=448)
    write_bag(bags / "s2.pt", features[:10], coords[:10], patch_size_level0=448)
    enc = build_slide_encoder("mean")
    out = tmp_path / "emb"
    report = embed_bag_folder(bags, enc, out, fmt=fmt)
    assert report.done == ["s1", "s2"] and not report.failed
    for slide, n in (("s1", 37), ("s2", 10)):
        path = formats.get(fmt).path(out, slide)
        assert embedding_exists(out, slide, enc.name, fmt)
        assert not embedding_exists(out, slide, "other_encoder", fmt) or fmt == "pt"
        np.testing.assert_allclose(read_slide_embedding(path), features[:n].mean(0), rtol=1e-6)
    assert embed_bag_folder(bags, enc, out, fmt=fmt).skipped == ["s1", "s2"]


def test_slide_embeddings_refuse_a_format_outside_the_table(tmp_path):
    from slideflow.engine.slide_embedding_outputs import embed_bags, read_slide_embedding

    with pytest.raises(ValueError, match=re.escape("format must be one of ('pt', 'h5'), got "
                                                   "'zarr'")):
        embed_bags([], None, tmp_path, None, bags_config=None, fmt="zarr")
    with pytest.raises(Exception, match="not a slide-embedding file"):
        read_slide_embedding(tmp_path / "x.zarr")


def _option_help(command: str) -> str:
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "--format" in x)
    return line


def test_cli_format_help_lists_the_table():
    assert formats.choices_text(formats.BAGS) in _option_help("features")
    assert formats.choices_text(formats.SLIDE_EMBEDDINGS) in _option_help("encode-slide")


@pytest.mark.parametrize("fmt", formats.names(formats.BAGS))
def test_cli_encode_slide_checks_format_against_the_table(fmt, tmp_path):
    res = runner.invoke(app, ["encode-slide", str(tmp_path / "missing.svs"), "-o",
                              str(tmp_path / "out"), "-s", "mean", "--format", fmt])
    assert res.exit_code == 2
    if fmt in formats.names(formats.SLIDE_EMBEDDINGS):  # accepted: the next check speaks
        assert "--format" not in res.output and "missing.svs" in res.output
    else:
        assert f"--format must be pt or h5, got '{fmt}'" in " ".join(res.output.split())
