"""Feature bags: .pt + index (Slideflow), h5 (CLAM/TRIDENT/AtlasPatch), zarr (TIAToolbox style),
streaming writer, atomic commits, conversion round trips, corruption, bags_config.json."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr

from slideflow.errors import BagError, BagsConfigMismatchError
from slideflow.io import convert, read_bag, write_bag
from slideflow.io.bags import (
    BagWriter,
    bag_path,
    geometry_attrs,
    index_path_for,
    list_bags,
    read_bag_meta,
)
from slideflow.io.bags_config import (
    check_compatible,
    diff_configs,
    read_bags_config,
    write_bags_config,
)
from slideflow.io.h5 import add_h5_features, list_h5_encoders

N, D, PS0 = 1000, 24, 448  # rows, features, tile extent in level-0 px
FORMATS = ("pt", "h5", "zarr")
META = {"extractor": "toy", "tile_px": 224, "tile_um": 112, "mpp": 0.25, "objective_power": 40,
        "level0_width": 46000, "level0_height": 32914, "weights_sha256": "ab" * 32,
        "request": {"selection": {"stride_div": 2}, "max_tiles": None, "seed": 0}}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((N, D)).astype(np.float32)
    feats[3, 5] = np.float32(np.nan)  # odd values must survive bit-for-bit
    feats[4, 0] = np.float32(-0.0)
    feats[5, 1] = np.finfo(np.float32).tiny
    coords = np.stack([rng.integers(0, 46000, N), rng.integers(0, 32914, N)], 1).astype(np.int64)
    coords[0] = (0, 0)
    return feats, coords


def _stream(outdir: Path, fmt: str, feats: np.ndarray, coords: np.ndarray, batch: int = 37,
            **kw) -> Path:
    with BagWriter(outdir, "slide-A", fmt, num_features=D, patch_size_level0=PS0, meta=META,
                   **kw) as w:
        for i in range(0, len(feats), batch):
            w.append(feats[i:i + batch], coords[i:i + batch])
    return w.path


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt", FORMATS)
def test_write_read_exact(tmp_path, data, fmt):
    feats, coords = data
    path = write_bag(tmp_path / f"slide-A.{fmt}", feats, coords, patch_size_level0=PS0, meta=META)
    bag = read_bag(path)
    assert _same(bag.features, feats) and _same(bag.coords, coords)
    assert bag.patch_size_level0 == PS0 and bag.attrs["coord_origin"] == "top_left"
    assert bag.meta == META and bag.attrs["format"] == fmt
    assert bag.attrs["patch_size"] == 224 and bag.attrs["target_magnification"] == 20.0
    assert bag.attrs["level0_magnification"] == 40.0 and bag.attrs["overlap"] == 112
    assert read_bag_meta(tmp_path, "slide-A", fmt) == META
    np.testing.assert_array_equal(bag.centres(), coords + PS0 // 2)
    assert _files(tmp_path) == sorted([f"slide-A.{fmt}"]
                                      + (["slide-A.index.npz"] if fmt == "pt" else []))


@pytest.mark.parametrize("fmt", FORMATS)
def test_streaming_equals_single_write(tmp_path, data, fmt):
    feats, coords = data
    one = write_bag(tmp_path / "one" / f"slide-A.{fmt}", feats, coords, patch_size_level0=PS0,
                    meta=META)
    many = _stream(tmp_path / "many", fmt, feats, coords, batch=7)
    big = _stream(tmp_path / "big", fmt, feats, coords, batch=1200)  # one batch > a chunk
    a, b, c = read_bag(one), read_bag(many), read_bag(big)
    for bag in (b, c):
        assert _same(bag.features, a.features) and _same(bag.coords, a.coords)
        assert {k: v for k, v in bag.attrs.items()} == a.attrs
    if fmt == "pt":  # one tensor + index: byte-identical however the rows arrived
        assert one.read_bytes() == many.read_bytes() == big.read_bytes()
        assert index_path_for(one).read_bytes() == index_path_for(many).read_bytes()


def test_pt_is_slideflow_layout(tmp_path, data):
    feats, coords = data
    path = write_bag(tmp_path / "slide-A.pt", feats, coords, patch_size_level0=PS0, meta=META)
    t = torch.load(path, weights_only=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (N, D)
    assert _same(t.numpy(), feats)
    assert t.untyped_storage().nbytes() == N * D * 4  # no spare buffer capacity saved
    with np.load(tmp_path / "slide-A.index.npz", allow_pickle=False) as z:
        assert z["arr_0"].dtype == np.int64 and z["arr_0"].shape == (N, 2)
        np.testing.assert_array_equal(z["arr_0"], coords + PS0 // 2)  # centres
        assert int(z["patch_size_level0"][0]) == PS0
        side = json.loads(str(z["slideflow"][0]))
        assert side["meta"] == META and side["attrs"]["patch_size_level0"] == PS0


def test_pt_byte_identical_across_processes(tmp_path, data):
    feats, coords = data
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "c.npy", coords)
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from slideflow.io import write_bag
        d = sys.argv[1]
        write_bag(d + '/out/x.pt', np.load(d + '/f.npy'), np.load(d + '/c.npy'),
                  patch_size_level0={PS0}, meta={{'a': 1}})
    """)
    digests = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
        digests.append(((tmp_path / "out/x.pt").read_bytes(),
                        (tmp_path / "out/x.index.npz").read_bytes()))
    assert digests[0] == digests[1]


def test_slideflow3_pt_without_sidecar(tmp_path, data):
    """A bag made by Slideflow itself: plain tensor + arr_0 centres, no tile size recorded."""
    feats, coords = data
    torch.save(torch.from_numpy(feats), tmp_path / "s.pt")
    np.savez(tmp_path / "s.index.npz", arr_0=coords + PS0 // 2)
    bag = read_bag(tmp_path / "s.pt")
    assert bag.attrs["coord_origin"] == "centre"
    np.testing.assert_array_equal(bag.coords, coords + PS0 // 2)
    with pytest.raises(BagError, match="tile size"):
        convert(tmp_path / "s.pt", tmp_path / "s.h5")
    np.testing.assert_array_equal(read_bag(tmp_path / "s.pt", patch_size_level0=PS0).coords,
                                  coords)
    cfg = {"extractor": {"class": "x", "kwargs": {}}, "normalizer": None, "num_features": D,
           "tile_px": 224, "tile_um": 112, "provenance": {"patch_size_level0": PS0}}
    write_bags_config(tmp_path, cfg)  # folder-level fallback
    bag = read_bag(tmp_path / "s.pt")
    assert bag.attrs["coord_origin"] == "top_left"
    np.testing.assert_array_equal(bag.coords, coords)


# --------------------------------------------------------------------------- h5 specifics

def test_h5_attrs_and_chunks(tmp_path, data):
    feats, coords = data
    path = _stream(tmp_path, "h5", feats, coords)
    with h5py.File(path, "r") as f:
        assert f["features"].dtype == np.float32 and f["features"].shape == (N, D)
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (N, 2)
        assert f["features"].chunks == (512, D) and f["coords"].chunks == (512, 2)
        assert f["features"].compression is None
        a = f["coords"].attrs
        want = {"patch_size": 224, "patch_size_level0": PS0, "level0_magnification": 40.0,
                "target_magnification": 20.0, "overlap": 112, "level0_width": 46000,
                "level0_height": 32914}
        for key, value in want.items():
            assert a[key] == value, key
            assert a[key].dtype == (np.float64 if isinstance(value, float) else np.int64), key
        assert a["name"] == "slide-A"
        assert f["features"].attrs["encoder"] == "toy"
        assert json.loads(f["features"].attrs["slideflow_meta"]) == META
    small = write_bag(tmp_path / "small.h5", feats[:100], coords[:100], patch_size_level0=PS0)
    with h5py.File(small, "r") as f:
        assert f["features"].chunks == (100, D)
    again = _stream(tmp_path / "again", "h5", feats, coords)  # no timestamps in the file
    assert again.read_bytes() == path.read_bytes()


def test_h5_reads_trident_style_file(tmp_path, data):
    """A file laid out like TRIDENT's: geometry attrs on coords, 'None' for unknown values."""
    feats, coords = data
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("features", data=feats.astype(np.float16), chunks=(1, D))
        ds = f.create_dataset("coords", data=coords.astype(np.int32))
        ds.attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                         "target_magnification": 20, "overlap": 0, "name": "t",
                         "level0_width": "None"})
    bag = read_bag(tmp_path / "t.h5")
    assert bag.features.dtype == np.float32 and bag.coords.dtype == np.int64
    np.testing.assert_array_equal(bag.coords, coords)
    assert bag.patch_size_level0 == 512 and "level0_width" not in bag.attrs


def test_h5_multi_encoder(tmp_path, data):
    feats, coords = data
    write_bag(tmp_path / "m.h5", feats, coords, patch_size_level0=PS0, encoder="enc_a")
    _ = write_bag(tmp_path / "m.h5", feats * 2, coords, patch_size_level0=PS0, encoder="enc_b")
    add_h5_features(tmp_path / "m.h5", "enc_c", feats[:, :8], meta={"extractor": "enc_c"})
    assert list_h5_encoders(tmp_path / "m.h5") == ["enc_a", "enc_b", "enc_c"]
    assert _same(read_bag(tmp_path / "m.h5", encoder="enc_a").features, feats)
    assert _same(read_bag(tmp_path / "m.h5", encoder="enc_b").features, feats * 2)
    assert read_bag(tmp_path / "m.h5", encoder="enc_c").features.shape == (N, 8)
    with pytest.raises(BagError, match="several encoders"):
        read_bag(tmp_path / "m.h5")
    with pytest.raises(BagError, match="share"):
        write_bag(tmp_path / "m.h5", feats, coords + 1, patch_size_level0=PS0, encoder="enc_d")
    with pytest.raises(BagError, match=r"\(1000, D\)"):
        add_h5_features(tmp_path / "m.h5", "enc_e", feats[:10])
    assert list_h5_encoders(tmp_path / "m.h5") == ["enc_a", "enc_b", "enc_c"]  # untouched
    write_bag(tmp_path / "single.h5", feats, coords, patch_size_level0=PS0)
    with pytest.raises(BagError, match="single-encoder"):
        add_h5_features(tmp_path / "single.h5", "x", feats)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------- zarr specifics

def test_zarr_boxes_and_chunks(tmp_path, data):
    feats, coords = data
    path = _stream(tmp_path, "zarr", feats, coords)
    g = zarr.open_group(str(path), mode="r")
    assert g["probabilities"].dtype == np.float32 and g["probabilities"].chunks == (512, D)
    assert "features" not in g  # TIAToolbox's key only
    boxes = g["coordinates"][...]
    assert boxes.dtype == np.int64 and boxes.shape == (N, 4)
    np.testing.assert_array_equal(boxes[:, :2], coords)
    np.testing.assert_array_equal(boxes[:, 2:], coords + PS0)
    assert g.attrs["patch_size_level0"] == PS0 and g.attrs["coord_space"] == "level0"
    assert g.attrs["slideflow_meta"] == META


def test_zarr_reads_tiatoolbox_names(tmp_path, data):
    feats, coords = data
    g = zarr.open_group(str(tmp_path / "tia.zarr"), mode="w")
    g.create_array("probabilities", data=feats)
    g.create_array("coordinates", data=np.concatenate([coords, coords + 256], 1))
    with pytest.raises(BagError, match="coords_scale="):  # resolution not recorded: refused
        read_bag(tmp_path / "tia.zarr")
    bag = read_bag(tmp_path / "tia.zarr", coords_scale=1.0)
    assert _same(bag.features, feats) and _same(bag.coords, coords)
    assert bag.patch_size_level0 == 256  # from the boxes


# --------------------------------------------------------------------------- conversion

def test_convert_round_trip_bit_identical(tmp_path, data):
    feats, coords = data
    pt = write_bag(tmp_path / "a" / "slide-A.pt", feats, coords, patch_size_level0=PS0, meta=META)
    h5 = convert(pt, tmp_path / "b" / "slide-A.h5")[0]
    zr = convert(h5, tmp_path / "c", format="zarr")[0]
    back = convert(zr, tmp_path / "d" / "slide-A.pt")[0]
    assert zr == tmp_path / "c" / "slide-A.zarr"
    for path in (h5, zr, back):
        bag = read_bag(path)
        assert _same(bag.features, feats) and _same(bag.coords, coords), path
        assert bag.meta == META and bag.patch_size_level0 == PS0
    assert back.read_bytes() == pt.read_bytes()
    assert index_path_for(back).read_bytes() == index_path_for(pt).read_bytes()


def test_convert_folder(tmp_path, data):
    feats, coords = data
    src = tmp_path / "src"
    for i in range(3):
        write_bag(src / f"s.{i}.pt", feats[i::3], coords[i::3], patch_size_level0=PS0 + i)
    cfg = {"extractor": {"class": "x", "kwargs": {}}, "normalizer": None, "num_features": D,
           "tile_px": 224, "tile_um": 112}
    write_bags_config(src, cfg)
    out = convert(src, tmp_path / "dst", format="h5")
    assert [p.name for p in out] == ["s.0.h5", "s.1.h5", "s.2.h5"]
    assert [p.name for p in list_bags(tmp_path / "dst")] == ["s.0.h5", "s.1.h5", "s.2.h5"]
    assert read_bags_config(tmp_path / "dst") == cfg
    for i in range(3):
        bag = read_bag(tmp_path / "dst" / f"s.{i}.h5")
        assert _same(bag.coords, coords[i::3]) and bag.patch_size_level0 == PS0 + i
    write_bag(src / "s.0.zarr", feats, coords, patch_size_level0=PS0)
    with pytest.raises(BagError, match="several formats"):
        convert(src, tmp_path / "dst2", format="h5")


# --------------------------------------------------------------------------- crashes, corruption

@pytest.mark.parametrize("fmt", FORMATS)
def test_exception_inside_writer_leaves_nothing(tmp_path, data, fmt):
    feats, coords = data
    old = write_bag(tmp_path / f"slide-A.{fmt}", feats[:10], coords[:10], patch_size_level0=PS0)
    with pytest.raises(RuntimeError, match="boom"):
        with BagWriter(tmp_path, "slide-A", fmt, num_features=D, patch_size_level0=PS0) as w:
            w.append(feats, coords)  # more than a chunk is already on disk (temp)
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with BagWriter(tmp_path, "slide-B", fmt, num_features=D, patch_size_level0=PS0) as w:
            w.append(feats, coords)
            raise RuntimeError("boom")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert not bag_path(tmp_path, "slide-B", fmt).exists()
    assert len(read_bag(old)) == 10  # the finished bag is untouched


@pytest.mark.parametrize("fmt", FORMATS)
def test_killed_writer_leaves_no_finished_looking_file(tmp_path, data, fmt):
    code = textwrap.dedent(f"""
        import os, numpy as np
        from slideflow.io.bags import BagWriter
        w = BagWriter({str(tmp_path)!r}, 'slide-K', {fmt!r}, num_features={D},
                      patch_size_level0={PS0})
        w.append(np.ones((2000, {D}), np.float32), np.zeros((2000, 2), np.int64))
        os._exit(9)  # as if killed: no close, no abort, no atexit
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert not bag_path(tmp_path, "slide-K", fmt).exists()
    assert not (tmp_path / "slide-K.index.npz").exists()
    assert list_bags(tmp_path) == []  # leftovers are temporaries, never listed as bags


def test_truncated_or_corrupt_bags_raise_bagerror(tmp_path, data):
    feats, coords = data
    for fmt in FORMATS:
        write_bag(tmp_path / f"x.{fmt}", feats, coords, patch_size_level0=PS0)
    pt, h5 = tmp_path / "x.pt", tmp_path / "x.h5"
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(BagError, match=r"x\.pt"):
        read_bag(pt)
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(BagError, match=r"x\.h5"):
        read_bag(h5)
    (tmp_path / "x.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(BagError, match=r"x\.zarr"):
        read_bag(tmp_path / "x.zarr")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(BagError, match=r"junk\.pt"):
        read_bag(tmp_path / "junk.pt")
    write_bag(tmp_path / "y.pt", feats, coords, patch_size_level0=PS0)
    (tmp_path / "y.index.npz").unlink()
    with pytest.raises(BagError, match="index"):
        read_bag(tmp_path / "y.pt")
    assert read_bag_meta(tmp_path, "y", "pt") is None
    (tmp_path / "y.index.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(BagError, match=r"y\.index\.npz"):
        read_bag(tmp_path / "y.pt")
    with pytest.raises(BagError, match="not found"):
        read_bag(tmp_path / "missing.h5")


def test_writer_validates_input(tmp_path, data):
    feats, coords = data
    with pytest.raises(BagError, match="patch_size_level0"):
        write_bag(tmp_path / "a.pt", feats, coords)
    w = BagWriter(tmp_path, "b", "h5", num_features=D, patch_size_level0=PS0)
    with pytest.raises(ValueError, match="features"):
        w.append(feats[:, :5], coords)
    with pytest.raises(ValueError, match="coords"):
        w.append(feats[:4], coords[:3])
    w.append(torch.from_numpy(feats[:4]), coords[:4].astype(np.float64))  # tensors, int floats
    w.close()
    assert len(read_bag(w.path)) == 4


# --------------------------------------------------------------------------- bags_config.json

CFG = {
    "extractor": {"class": "slideflow.model.extractors.retccl.RetCCLFeatures",
                  "kwargs": {"center_crop": True}},
    "normalizer": {"method": "macenko", "fit": {"stain_matrix_target": [[0.5, 0.2], [0.7, 0.8]]}},
    "num_features": 2048, "tile_px": 299, "tile_um": 302,
    "provenance": {"slideflow_version": "0.1.0", "weights_sha256": "aa", "precision": "fp32",
                   "format": "pt", "tile_selection": {"qc": "otsu", "stride_div": 1}},
}


def test_bags_config_round_trip_and_compat(tmp_path):
    assert check_compatible(tmp_path, CFG) is None  # empty folder: anything goes
    path = write_bags_config(tmp_path, CFG)
    assert path.name == "bags_config.json" and read_bags_config(path) == CFG
    assert json.loads(path.read_text())["extractor"]["class"].endswith("RetCCLFeatures")
    same = json.loads(json.dumps(CFG))
    same["provenance"].update(slideflow_version="9.9", format="h5")  # volatile keys
    same["tile_um"] = 302.0
    assert check_compatible(tmp_path, same) == CFG
    other = json.loads(json.dumps(CFG))
    other["extractor"]["kwargs"]["center_crop"] = False
    other["tile_px"] = 256
    other["provenance"]["weights_sha256"] = "bb"
    other["provenance"]["tile_selection"]["qc"] = None
    with pytest.raises(BagsConfigMismatchError) as exc:
        check_compatible(tmp_path, other)
    keys = ["extractor.kwargs.center_crop", "tile_px", "provenance.tile_selection.qc",
            "provenance.weights_sha256"]
    assert exc.value.keys == keys
    for key in keys:
        assert key in str(exc.value)
    slideflow3 = {k: v for k, v in CFG.items() if k != "provenance"}  # no provenance block
    assert diff_configs(slideflow3, CFG) == []
    assert diff_configs({**CFG, "tile_um": "20X"}, {**CFG, "tile_um": "20x"}) == []


def test_bags_config_errors(tmp_path):
    assert read_bags_config(tmp_path, missing_ok=True) is None
    with pytest.raises(BagError, match="not found"):
        read_bags_config(tmp_path)
    (tmp_path / "bags_config.json").write_text("{broken")
    with pytest.raises(BagError, match="bags_config.json"):
        read_bags_config(tmp_path)
    with pytest.raises(ValueError, match="tile_um"):
        write_bags_config(tmp_path, {k: v for k, v in CFG.items() if k != "tile_um"})


def test_geometry_attrs_rules():
    g = geometry_attrs(1024, {"tile_px": 256, "tile_um": "10x", "mpp": 0.25})
    assert g == {"patch_size": 256, "patch_size_level0": 1024, "level0_magnification": 40.0,
                 "target_magnification": 10.0}
    assert geometry_attrs(512, {}, {"overlap": 0}) == {"patch_size_level0": 512, "overlap": 0}


def test_unclosed_writer_is_discarded(tmp_path, data):
    feats, coords = data
    for fmt in FORMATS:
        w = BagWriter(tmp_path, "gone", fmt, num_features=D, patch_size_level0=PS0)
        w.append(feats, coords)
        del w  # never closed: not finished, so nothing may look finished
    assert _files(tmp_path) == []
