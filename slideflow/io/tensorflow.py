"""tf.data pipelines over slideflow TFRecords (importing this module imports TensorFlow).

    >>> import slideflow as sf
    >>> ds = sf.io.tensorflow.interleave(tfrecords, labels={"slide1": 0, ...}, batch_size=32,
    ...                                  augment="xyr", shuffle=True, seed=1)
    >>> for images, labels in ds: ...

Records are parsed by TensorFlow itself (`tf.io.parse_single_example` with our schema) and
images decoded by TensorFlow (`tf.io.decode_image`: JPEG or PNG). Elements are
``(image, label[, slide][, loc])``: image uint8 (H, W, 3) (float32 when `standardize`), label
from `labels` (-1 when none), slide = TFRecord file name without ``.tfrecords`` (how labels are
keyed), loc = int64 (2,) tile centre (loc_x, loc_y) in level-0 px.

Order: without `balance`, the tiles and their order are those of the PyTorch `TileDataset` with
the same `seed`, `shuffle` and `interleave` (both follow `slideflow.io.plan.epoch_plan`).
Unshuffled plans read each file sequentially with `tf.data.TFRecordDataset` (checksums checked
by TensorFlow); shuffled plans read records by offset through our indexed reader (checksums
checked by us) and parse them with TensorFlow. `balance='slide'|'category'` samples files with
`tf.data.Dataset.sample_from_datasets` (Slideflow's balancing), seeded, not in torch's order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..tf_runtime import import_tensorflow
from .plan import epoch_plan, shard_plan
from .tf_augment import (
    ALL_AUGMENT,
    AUGMENTATIONS,
    _parse_augment,
    _StainJitter,
    augment_image,
    gaussian_blur,
)
from .tfrecord import TFRecord

tf = import_tensorflow()
AUTOTUNE = tf.data.AUTOTUNE

#: our TFRecord schema, as TensorFlow parses it
FEATURES = {
    "image_raw": tf.io.FixedLenFeature([], tf.string),
    "slide": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "loc_x": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "loc_y": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized record -> {'image_raw', 'slide', 'loc_x', 'loc_y'} tensors."""
    return tf.io.parse_single_example(serialized, FEATURES)


def decode_image(image_raw: tf.Tensor) -> tf.Tensor:
    """JPEG or PNG bytes -> uint8 (H, W, 3), decoded by TensorFlow.

    JPEG uses the accurate integer DCT (TensorFlow's default is the fast one, which differs
    from libjpeg-turbo's default by up to ~30 grey levels on q100 tiles); with it, TensorFlow
    and our decoder agree (see tests/test_tensorflow.py for the measured difference).
    """
    image = tf.cond(
        tf.io.is_jpeg(image_raw),
        lambda: tf.io.decode_jpeg(image_raw, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(image_raw, channels=3))
    image.set_shape([None, None, 3])
    return image


# --------------------------------------------------------------------------- labels


def _label_array(names: Sequence[str], labels: Mapping[str, Any] | None) -> np.ndarray:
    """Labels aligned with the files (int64 or float32; vectors allowed), -1 when none."""
    if labels is None:
        return np.full(len(names), -1, np.int64)
    missing = sorted({n for n in names if n not in labels})
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"no label for {len(missing)} slide(s): {shown}; labels are keyed "
                           "by TFRecord file name without '.tfrecords'")
    values = [labels[n] for n in names]
    arr = np.asarray(values)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    raise DatasetError(f"labels must be numbers (or equal-length number lists) for TensorFlow, "
                       f"got {arr.dtype} values like {values[:3]}; map categories to indices "
                       "with Dataset.labels(column)")


def _shard_arg(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    if isinstance(shard, Mapping):
        return int(shard["index"]), int(shard["count"])
    index, count = shard
    return int(index), int(count)


# --------------------------------------------------------------------------- datasets


def _sequential(paths: list[str], files: np.ndarray, recs: np.ndarray,
                lengths: np.ndarray) -> tf.data.Dataset:
    """Plan order by TFRecordDataset per file, chosen by the plan's file sequence.

    Valid for plans that visit each file's records in increasing order (unshuffled plans, and
    any stride of one): records of a file that another shard takes are filtered out by index.
    """
    used = sorted(set(files.tolist()))
    slot = {f: j for j, f in enumerate(used)}
    datasets = []
    for f in used:
        keep = np.zeros(int(lengths[f]), bool)
        keep[recs[files == f]] = True
        ds = tf.data.TFRecordDataset(paths[f])
        if not keep.all():
            mask = tf.constant(keep)
            ds = ds.enumerate().filter(lambda i, r, m=mask: tf.gather(m, i)).map(
                lambda i, r: r)
        datasets.append(ds.map(lambda r, f=f: (r, tf.constant(f, tf.int64))))
    if not datasets:
        return tf.data.Dataset.from_tensor_slices((tf.constant([], tf.string),
                                                   tf.constant([], tf.int64)))
    choice = tf.data.Dataset.from_tensor_slices(
        np.array([slot[f] for f in files.tolist()], np.int64))
    return tf.data.Dataset.choose_from_datasets(datasets, choice)


def _random_access(records: list[TFRecord], plans) -> tf.data.Dataset:
    """Plan order by reading each record at its indexed offset (checksums verified)."""

    def gen():
        for files, recs in plans():
            for f, k in zip(files.tolist(), recs.tolist()):
                yield records[f].read_record(k), f

    sig = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64))
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


def _balanced(paths: list[str], label_arr: np.ndarray, balance: str, shuffle: bool,
              seed: int, shard: tuple[int, int] | None) -> tf.data.Dataset:
    """Slideflow-style balanced sampling across slides or label categories (infinite)."""
    n = len(paths)
    if balance == "slide":
        weights = np.full(n, 1.0 / n)
    elif balance == "category":
        if label_arr.ndim != 1 or label_arr.dtype.kind != "i" or (label_arr < 0).any():
            raise ValueError("balance='category' needs one categorical (integer) label per "
                             "slide")
        cats, counts = np.unique(label_arr, return_counts=True)
        per_cat = dict(zip(cats.tolist(), counts.tolist()))
        weights = np.array([1.0 / (len(cats) * per_cat[int(c)]) for c in label_arr])
    else:
        raise ValueError(f"balance must be None, 'slide' or 'category', got {balance!r}")
    datasets = []
    for f, path in enumerate(paths):
        ds = tf.data.TFRecordDataset(path)
        if shard is not None:
            ds = ds.shard(shard[1], shard[0])
        if shuffle:
            ds = ds.shuffle(1000, seed=seed + f, reshuffle_each_iteration=True)
        datasets.append(ds.repeat().map(lambda r, f=f: (r, tf.constant(f, tf.int64))))
    return tf.data.Dataset.sample_from_datasets(datasets, weights=weights.tolist(), seed=seed)


def interleave(
    tfrecords: Sequence[str | os.PathLike] | str | os.PathLike,
    labels: Mapping[str, Any] | None = None,
    *,
    batch_size: int | None = None,
    infinite: bool = False,
    augment: bool | str = False,
    standardize: bool = False,
    incl_slidenames: bool = False,
    incl_loc: bool = False,
    shard: Any = None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    interleave: bool = True,
    balance: str | None = None,
    normalizer: Any = None,
    drop_last: bool = False,
    num_parallel_calls: int = AUTOTUNE,
    prefetch: int | None = AUTOTUNE,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of ``(image, label[, slide][, loc])`` from TFRecords.

    Args:
        tfrecords: TFRecord paths (file name without ``.tfrecords`` = slide name).
        labels: {slide: label} (numbers or equal-length number lists); None gives -1.
        batch_size: batch the elements (None: unbatched).
        infinite: repeat forever (each pass is the next epoch's plan).
        augment: Slideflow's letters ('x', 'y', 'r', 'j', 'b', 'n'; True = 'xyrjb'), seeded
            per element from (`seed`, epoch, element index): reruns are identical.
        standardize: `tf.image.per_image_standardization` (float32 output).
        shard: (index, count) or {'index', 'count'}: a disjoint stride of the plan.
        shuffle, seed, epoch, interleave: the plan (same as `TileDataset`).
        balance: None (plan order), 'slide' or 'category' (sampled, infinite unless finite
            `infinite=False`, which takes one epoch's worth of tiles).
        normalizer: stain normaliser applied to every tile (numpy, via `tf.numpy_function`);
            required by augment 'n'.
    """
    if isinstance(tfrecords, (str, os.PathLike)):
        tfrecords = [tfrecords]
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    letters = _parse_augment(augment)
    records = [TFRecord(p, verify=True) for p in tfrecords]
    paths = [str(r.path) for r in records]
    names = [r.name for r in records]
    lengths = np.array([len(r) for r in records], np.int64)
    label_arr = _label_array(names, labels)
    shard_ix = _shard_arg(shard)

    def plan_for(e: int) -> tuple[np.ndarray, np.ndarray]:
        files, recs = epoch_plan(lengths, seed=seed, epoch=e, shuffle=shuffle,
                                 interleave=interleave)
        return shard_plan(files, recs, *shard_ix) if shard_ix else (files, recs)

    if balance is not None:
        ds = _balanced(paths, label_arr, balance, shuffle, seed, shard_ix)
        if not infinite:
            total = int(lengths.sum())
            ds = ds.take(-(-total // shard_ix[1]) if shard_ix else total)
    elif shuffle:
        def plans():
            e = epoch
            while True:
                yield plan_for(e)
                if not infinite:
                    return
                e += 1
        ds = _random_access(records, plans)
    else:
        ds = _sequential(paths, *plan_for(epoch), lengths)
        if infinite:
            ds = ds.repeat()

    stain = _StainJitter(normalizer) if "n" in letters else None
    norm_fn = None
    if normalizer is not None and stain is None:
        def norm_fn(image):
            out = tf.numpy_function(normalizer.transform, [image], tf.uint8, stateful=False)
            out.set_shape(image.shape)
            return out

    names_t = tf.constant(names)
    labels_t = tf.constant(label_arr)
    base_seed = tf.constant(int(seed), tf.int64)

    def element(i, serialized, f):
        ex = parse_example(serialized)
        image = decode_image(ex["image_raw"])
        if norm_fn is not None:
            image = norm_fn(image)
        if letters:
            image = augment_image(image, tf.stack([base_seed, i]), letters, stain)
        if standardize:
            image = tf.image.per_image_standardization(image)
        out = (image, tf.gather(labels_t, f))
        if incl_slidenames:
            out += (tf.gather(names_t, f),)
        if incl_loc:
            out += (tf.stack([ex["loc_x"], ex["loc_y"]]),)
        return out

    # element index i keys the augmentation: (epoch, position) folded into one int64
    ds = ds.enumerate(start=int(epoch) << 40)
    ds = ds.map(lambda i, rec: element(i, rec[0], rec[1]), num_parallel_calls=num_parallel_calls,
                deterministic=True)
    if batch_size is not None:
        ds = ds.batch(int(batch_size), drop_remainder=drop_last)
    if prefetch is not None:
        ds = ds.prefetch(prefetch)
    return ds


# --------------------------------------------------------------------------- proof helpers


def tf_example(image_raw: bytes, slide: str, loc_x: int, loc_y: int) -> bytes:
    """The record TensorFlow itself serialises for a tile (for format cross-checks)."""
    ex = tf.train.Example(features=tf.train.Features(feature={
        "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_raw])),
        "slide": tf.train.Feature(bytes_list=tf.train.BytesList(value=[slide.encode()])),
        "loc_x": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(loc_x)])),
        "loc_y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(loc_y)])),
    }))
    return ex.SerializeToString(deterministic=True)


__all__ = ["ALL_AUGMENT", "AUGMENTATIONS", "FEATURES", "augment_image", "decode_image",
           "gaussian_blur", "interleave", "parse_example", "tf_example"]
