"""TensorFlow: our TFRecords are TensorFlow's format, tf.data loaders, Keras extractors (issue 15).

TensorFlow is imported once for this module (it takes seconds); everything else stays small.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("tensorflow is not installed (pip install slideflow[tf])", allow_module_level=True)

from slideflow.tf_runtime import import_tensorflow  # noqa: E402

tf = import_tensorflow()  # before keras: see slideflow/tf_runtime.py
import keras  # noqa: E402
from test_torch_data import PX, SIZES, _tile, write_tile_tfrecords  # noqa: E402

import slideflow as sf  # noqa: E402
import slideflow.io.tensorflow as sftf  # noqa: E402
from slideflow.errors import DatasetError, UnsafeConfigError, WeightsError  # noqa: E402
from slideflow.io import imgcodec  # noqa: E402
from slideflow.io.protobuf import encode_example  # noqa: E402
from slideflow.io.tfrecord import TFRecord, TFRecordWriter, build_index  # noqa: E402
from slideflow.io.torch_data import TileDataset  # noqa: E402

from conftest import CMU  # noqa: E402

LABELS = {"a": 0, "b": 1, "c": 1}


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> list[Path]:
    return write_tile_tfrecords(tmp_path_factory.mktemp("tfr"))


@pytest.fixture(scope="module")
def cmu_project(tmp_path_factory, slides):
    """CMU-1 extracted to JPEG TFRecords (real tiles) in a project with a label column."""
    root = tmp_path_factory.mktemp("proj")
    folder = root / "slides"
    folder.mkdir()
    (folder / CMU.name).symlink_to(CMU)
    csv = root / "ann.csv"
    csv.write_text("patient,slide,subtype\np1,CMU-1-Small-Region,B\n")
    P = sf.create_project(root / "p", annotations=csv, slides=folder)
    ds = P.dataset(64, 128)
    ds.extract_tiles(img_format="jpg", qc=None, report=False, progress=False)
    return P


# --------------------------------------------------------------------------- the format


def test_tensorflow_reads_every_record_we_write(cmu_project):
    ds = cmu_project.dataset(64, 128)
    (path,) = ds.tfrecords()
    ours = list(TFRecord(path))
    theirs = [sftf.parse_example(r) for r in tf.data.TFRecordDataset(str(path))]
    assert len(ours) == len(theirs) == len(TFRecord(path)) > 10
    for o, t in zip(ours, theirs):
        assert t["image_raw"].numpy() == o["image_raw"]
        assert t["slide"].numpy().decode() == o["slide"] == "CMU-1-Small-Region"
        assert (int(t["loc_x"]), int(t["loc_y"])) == (o["loc_x"], o["loc_y"])


def test_tensorflow_checks_our_record_checksums(tfrecords, tmp_path):
    bad = tmp_path / "bad.tfrecords"
    data = bytearray(tfrecords[0].read_bytes())
    data[40] ^= 0xFF  # inside record 0's payload: only its data crc can notice
    bad.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
        list(tf.data.TFRecordDataset(str(bad)))
    assert len(list(tf.data.TFRecordDataset(str(tfrecords[0])))) == SIZES["a"]


def test_tensorflow_written_tfrecords_read_through_our_reader(tmp_path):
    path = tmp_path / "tfw.tfrecords"
    tiles = [_tile("t", i) for i in range(4)]
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, t in enumerate(tiles):
            w.write(sftf.tf_example(imgcodec.encode(t, "png"), "tfw", 10 * i, 3))
    index = build_index(path)
    assert len(index) == 4
    np.testing.assert_array_equal(index.locations, [[0, 3], [10, 3], [20, 3], [30, 3]])
    tfr = TFRecord(path, verify=True)
    assert tfr.slide == "tfw"
    for i, t in enumerate(tiles):
        np.testing.assert_array_equal(tfr.image(i), t)
    batches = list(tfr.iter_batches(3))
    assert [len(b[0]) for b in batches] == [3, 1]


def test_serialisation_is_byte_identical_to_tensorflow(tmp_path):
    raw = imgcodec.encode(_tile("q", 1), "jpg")
    for slide, x, y in (("q", 0, 0), ("slide with ünïcode", 123456789, 2 ** 40), ("s", -5, 7)):
        theirs = sftf.tf_example(raw, slide, x, y)
        ours = encode_example({"image_raw": raw, "slide": slide.encode(), "loc_x": x,
                               "loc_y": y})
        assert ours == theirs
    # whole files: our writer and TensorFlow's frame the same records identically
    a, b = tmp_path / "ours.tfrecords", tmp_path / "theirs.tfrecords"
    with TFRecordWriter(a, write_index=False) as w:
        for i in range(3):
            w.write(raw, "q", i, 2 * i)
    with tf.io.TFRecordWriter(str(b)) as w:
        for i in range(3):
            w.write(sftf.tf_example(raw, "q", i, 2 * i))
    assert a.read_bytes() == b.read_bytes()


def test_tensorflow_decodes_our_images_like_our_decoder(cmu_project, tfrecords):
    # PNG: identical
    for rec in TFRecord(tfrecords[2]):
        np.testing.assert_array_equal(sftf.decode_image(rec["image_raw"]).numpy(),
                                      imgcodec.decode(rec["image_raw"]))
    # JPEG (q100 4:4:4 from the real slide): libjpeg-turbo on both sides; measured identical
    (path,) = cmu_project.dataset(64, 128).tfrecords()
    diffs = []
    for rec in TFRecord(path):
        a = sftf.decode_image(rec["image_raw"]).numpy().astype(int)
        b = imgcodec.decode(rec["image_raw"]).astype(int)
        diffs.append(np.abs(a - b).max())
    assert max(diffs) <= 1, f"max |TF - ours| = {max(diffs)}"


# --------------------------------------------------------------------------- tf.data loaders


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("shard", [None, (1, 2)])
def test_interleave_matches_torch_tile_order(tfrecords, shuffle, interleave, shard):
    ds = sftf.interleave(tfrecords, LABELS, shuffle=shuffle, interleave=interleave, seed=3,
                         incl_slidenames=True, incl_loc=True, shard=shard)
    got = [(s.numpy().decode(), tuple(loc.numpy()), int(lab), img.numpy())
           for img, lab, s, loc in ds]
    torch_ds = TileDataset(tfrecords, LABELS, shuffle=shuffle, interleave=interleave, seed=3)
    want = [(s, tuple(loc.numpy()), lab, img.numpy()) for img, lab, s, loc in torch_ds]
    if shard:
        want = want[shard[0]::shard[1]]
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g[3], w[3])


def test_interleave_batches_labels_and_epochs(tfrecords):
    ds = sftf.interleave(tfrecords, LABELS, batch_size=4, shuffle=True, seed=1)
    shapes = [tuple(img.shape) for img, _ in ds]
    assert shapes == [(4, PX, PX, 3)] * 4
    seen = Counter()
    for img, lab in ds.unbatch():
        slide = chr(int(img.numpy()[0, 0, 0]))
        assert int(lab) == LABELS[slide]
        seen[slide] += 1
    assert seen == Counter(SIZES)
    # infinite: the second pass is epoch 1's plan, as TileDataset.set_epoch(1)
    inf = list(sftf.interleave(tfrecords, shuffle=True, seed=1, infinite=True,
                               incl_loc=True).take(32))
    td = TileDataset(tfrecords, shuffle=True, seed=1)
    first = [(int(i[0, 0, 0]), tuple(loc.numpy())) for i, _, _, loc in td]
    td.set_epoch(1)
    second = [(int(i[0, 0, 0]), tuple(loc.numpy())) for i, _, _, loc in td]
    got = [(int(i.numpy()[0, 0, 0]), tuple(loc.numpy())) for i, _, loc in inf]
    assert got == first + second
    unlabelled = next(iter(sftf.interleave(tfrecords)))
    assert int(unlabelled[1]) == -1


def test_interleave_errors_name_the_fix(tfrecords):
    with pytest.raises(DatasetError, match="no label for 1 slide"):
        sftf.interleave(tfrecords, {"a": 0, "b": 1})
    with pytest.raises(ValueError, match="unknown augmentation letter"):
        sftf.interleave(tfrecords, augment="xq")
    with pytest.raises(ValueError, match="batch_size"):
        sftf.interleave(tfrecords, batch_size=0)
    with pytest.raises(ValueError, match="shard"):
        sftf.interleave(tfrecords, shard=(2, 2))
    with pytest.raises(DatasetError, match="must be numbers"):
        sftf.interleave(tfrecords, {"a": "x", "b": "y", "c": "z"})
    with pytest.raises(ValueError, match="needs a Reinhard normalizer"):
        sftf.interleave(tfrecords, augment="n")


def test_augmentations_are_seeded_and_do_what_the_letters_say(tfrecords):
    img = tf.constant(_tile("a", 3))

    def run(letters, i):
        return sftf.augment_image(img, tf.constant([7, i], tf.int64), letters).numpy()

    flips = {i: run("x", i) for i in range(16)}
    assert all(np.array_equal(v, _tile("a", 3)) or np.array_equal(v, _tile("a", 3)[:, ::-1])
               for v in flips.values())
    assert 3 < sum(not np.array_equal(v, _tile("a", 3)) for v in flips.values()) < 13
    rots = {run("r", i).tobytes() for i in range(24)}
    assert rots == {np.rot90(_tile("a", 3), k).tobytes() for k in range(4)}
    assert np.array_equal(run("xyrjb", 5), run("xyrjb", 5))  # same seed, same result
    blurred = sftf.gaussian_blur(img, 2.0).numpy()
    assert blurred.shape == (PX, PX, 3) and not np.array_equal(blurred, _tile("a", 3))
    flat = tf.fill([PX, PX, 3], tf.constant(90, tf.uint8))
    np.testing.assert_array_equal(sftf.gaussian_blur(flat, 8.0).numpy(), 90)  # no border loss
    a = [x[0].numpy() for x in sftf.interleave(tfrecords, augment=True, seed=2)]
    b = [x[0].numpy() for x in sftf.interleave(tfrecords, augment=True, seed=2)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    std = next(iter(sftf.interleave(tfrecords, standardize=True)))[0].numpy()
    assert std.dtype == np.float32 and abs(std.mean()) < 1e-4 and abs(std.std() - 1) < 1e-2


def test_stain_augmentation_varies_colour_per_tile(cmu_project):
    norm = sf.norm.autoselect("reinhard_fast")
    (path,) = cmu_project.dataset(64, 128).tfrecords()
    imgs = [x[0].numpy() for x in sftf.interleave([path], augment="n", normalizer=norm).take(6)]
    plain = [x[0].numpy() for x in sftf.interleave([path], normalizer=norm).take(6)]
    assert any(not np.array_equal(a, b) for a, b in zip(imgs, plain))
    again = [x[0].numpy() for x in sftf.interleave([path], augment="n", normalizer=norm).take(6)]
    assert all(np.array_equal(a, b) for a, b in zip(imgs, again))


def test_balanced_sampling_across_categories(tfrecords):
    ds = sftf.interleave(tfrecords, LABELS, balance="category", seed=0, infinite=True)
    counts = Counter(int(lab) for _, lab in ds.take(2000))
    assert abs(counts[0] / 2000 - 0.5) < 0.05  # slide 'a' alone is category 0
    finite = list(sftf.interleave(tfrecords, LABELS, balance="slide", seed=0))
    assert len(finite) == sum(SIZES.values())


def test_dataset_tensorflow_uses_project_labels(cmu_project):
    ds = cmu_project.dataset(64, 128)
    n = sum(ds.manifest().values())
    tfds = ds.tensorflow("subtype", batch_size=8, incl_slidenames=True)
    total = 0
    for img, lab, slide in tfds:
        assert img.dtype == tf.uint8 and img.shape[1:] == (64, 64, 3)
        assert set(lab.numpy().tolist()) == {0}
        assert {s.decode() for s in slide.numpy()} == {"CMU-1-Small-Region"}
        total += len(img)
    assert total == n
    torch_first = ds.torch("subtype")
    assert len(torch_first) == n


def test_import_slideflow_does_not_import_tensorflow():
    code = ("import sys, slideflow as sf, slideflow.io, slideflow.model; sf.list_extractors; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- Keras extractors


def _toy_keras(px: int | None = None):
    inp = keras.Input((px, px, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    x = keras.layers.Conv2D(8, 3, name="conv1", activation="relu")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, name="conv2", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(5, name="head")(x)
    keras.utils.set_random_seed(0)
    return keras.Model(inp, out)


def test_keras_model_as_extractor_with_layers_and_pooling():
    model = _toy_keras()
    tiles = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    ext = sf.build_feature_extractor(model)
    feats = ext(tiles)
    assert feats.shape == (3, 5) and feats.dtype == np.float32 and ext.num_features == 5
    np.testing.assert_allclose(feats, model(tiles.astype(np.float32)).numpy(), atol=1e-5)
    ext2 = sf.build_feature_extractor(model, layers=["conv1", "conv2"], pooling="max")
    got = ext2(tiles)
    sub = keras.Model(model.inputs, [model.get_layer("conv1").output,
                                     model.get_layer("conv2").output])
    c1, c2 = sub(tiles.astype(np.float32))
    want = np.concatenate([c1.numpy().max(axis=(1, 2)), c2.numpy().max(axis=(1, 2))], 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert ext2.num_features == 20
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        sf.build_feature_extractor(model, layers="nope")
    with pytest.raises(TypeError, match="PyTorch extractors only"):
        sf.build_feature_extractor(model, resize=224)
    with pytest.raises(WeightsError, match="cannot be recorded"):
        ext.dump_config()


def test_saved_keras_model_bags_and_rebuild(cmu_project, tmp_path):
    path = tmp_path / "toy.keras"
    _toy_keras().save(path)
    ext = sf.build_feature_extractor(str(path), layers="gap")
    assert ext.weights_sha256 and ext.num_features == 12
    ds = cmu_project.dataset(64, 128)
    out = tmp_path / "bags"
    report = ds.generate_feature_bags(ext, out, progress=False)
    assert list(report.done) == ["CMU-1-Small-Region"]
    cfg = json.loads((out / "bags_config.json").read_text())
    assert cfg["extractor"] == {"class": "slideflow.model.KerasFeatureExtractor",
                                "kwargs": {"model": str(path.resolve()), "layers": ["gap"],
                                           "pooling": "avg"}}
    assert cfg["provenance"]["weights_sha256"] == ext.weights_sha256
    bag = sf.io.read_bag(out / "CMU-1-Small-Region.pt")
    rebuilt, _ = sf.rebuild_extractor(out)
    (tfr,) = ds.tfrecords()
    tiles = np.stack([TFRecord(tfr).image(i) for i in range(len(bag.features))])
    np.testing.assert_allclose(rebuilt(tiles), bag.features, atol=1e-5)
    # the same tiles straight from the slide through the engine
    wsi = sf.WSI(CMU, 64, 128)
    grid = rebuilt(wsi)
    assert grid.rows.shape == (len(wsi), 12)


def test_keras_files_that_carry_code_are_refused(tmp_path):
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Lambda(lambda t: t * 2)(inp)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(WeightsError, match="cannot load this Keras model safely"):
        sf.build_feature_extractor(str(path))
    with pytest.raises(UnsafeConfigError, match="never saved"):
        sf.rebuild_extractor({"extractor": {"class": "slideflow.model.KerasFeatureExtractor",
                                            "kwargs": {"model": None}}})


def test_keras_imagenet_application_from_local_weights_only(tmp_path, monkeypatch):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(WeightsError, match="nothing is downloaded"):
        sf.build_feature_extractor("resnet50_imagenet", backend="tensorflow")
    rand = sf.build_feature_extractor("resnet50_imagenet", backend="tensorflow",
                                      pretrained=False, seed=1, tile_px=64)
    assert rand.num_features == 2048 and not rand.pretrained
    # a local weights file where Keras keeps its ImageNet downloads
    target = tmp_path / "kh" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    target.parent.mkdir(parents=True)
    with h5py.File(target, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, rand.model)
    ext = sf.build_feature_extractor("resnet50_imagenet", backend="tensorflow", tile_px=64)
    assert ext.pretrained and ext.weights_source == str(target)
    tiles = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(ext(tiles), rand(tiles), rtol=1e-4, atol=1e-4)
    # caffe preprocessing, as keras.applications.resnet50.preprocess_input
    x = keras.applications.resnet50.preprocess_input(tiles.astype(np.float32))
    np.testing.assert_allclose(ext(tiles), rand.model(x).numpy(), rtol=1e-4, atol=1e-4)
    # Slideflow 3's TensorFlow ImageNet config rebuilds to it
    sf3 = {"extractor": {"class": "slideflow.model.extractors.TensorflowImagenetLayerExtractor",
                         "kwargs": {"model_name": "resnet50", "tile_px": 64,
                                    "layers": ["postconv"], "pooling": "avg"}},
           "num_features": 2048}
    again, _ = sf.rebuild_extractor(sf3)
    np.testing.assert_allclose(again(tiles), ext(tiles), rtol=1e-5)
    cfg = ext.dump_config()
    assert cfg["kwargs"] == {"name": "resnet50_imagenet", "backend": "tensorflow", "tile_px": 64}
    moved = tmp_path / "w.h5"
    shutil.copy(target, moved)
    ext3 = sf.build_feature_extractor("resnet50_imagenet", backend="tensorflow",
                                      weights=str(moved), tile_px=64)
    assert ext3.dump_config()["kwargs"]["weights"] == str(moved.resolve())
    assert ext3.weights_sha256 == ext.weights_sha256


def test_tensorflow_then_torchvision_does_not_crash():
    """Regression: TensorFlow loaded before Triton made `import torchvision` segfault."""
    code = ("import slideflow.io.tensorflow, torchvision, torch; "
            "print(torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[0]"
