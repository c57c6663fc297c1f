"""Slideflow's tile augmentations as TensorFlow ops (`sf.io.tensorflow.interleave(augment=)`):
one letter each, seeded per element so a run is repeatable. Importing this module imports
TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tf_runtime import import_tensorflow

tf = import_tensorflow()

#: Slideflow's augmentation letters; True means all of 'xyrjb' (as in Slideflow)
AUGMENTATIONS = {"x": "random horizontal flip (p=0.5)", "y": "random vertical flip (p=0.5)",
                 "r": "random rotation by 0/90/180/270 degrees",
                 "j": "JPEG re-compression at quality 50-99 (p=0.5)",
                 "b": "Gaussian blur (p=0.1; sigma 1, 2, 4, 8 with p 1/2, 1/4, 1/8, 1/8)",
                 "n": "random stain augmentation (Reinhard target jitter; needs normalizer=)"}
ALL_AUGMENT = "xyrjb"


def _parse_augment(augment: bool | str | None) -> str:
    if augment is True:
        return ALL_AUGMENT
    if augment in (False, None, ""):
        return ""
    if not isinstance(augment, str):
        raise ValueError(f"augment must be a bool or a string of {sorted(AUGMENTATIONS)}, "
                         f"got {augment!r}")
    unknown = sorted(set(augment) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation letter(s) {unknown} in {augment!r}; known: "
                         + ", ".join(f"{k} = {v}" for k, v in AUGMENTATIONS.items()))
    return augment


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of a uint8 (H, W, 3) image, rounded to uint8.

    Borders use the kernel weights that fall inside the image (renormalised), so any tile
    size works, even one smaller than the kernel.
    """
    k = _gaussian_kernel(sigma)
    x = tf.cast(image, tf.float32)[None]
    ones = tf.ones_like(x[..., :1])
    kx = tf.constant(k[None, :, None, None])
    ky = tf.constant(k[:, None, None, None])

    def blur(t):
        chans = tf.unstack(t, axis=-1)
        out = []
        for c in chans:
            c = tf.nn.conv2d(c[..., None], kx, 1, "SAME")
            out.append(tf.nn.conv2d(c, ky, 1, "SAME")[..., 0])
        return tf.stack(out, axis=-1)

    x = blur(x) / blur(ones)
    return tf.cast(tf.clip_by_value(tf.round(x[0]), 0, 255), tf.uint8)


def _uniform(seed: tf.Tensor, i: int) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=seed + tf.constant([0, i], tf.int64))


def augment_image(image: tf.Tensor, seed: tf.Tensor, augment: str,
                  stain: Any = None) -> tf.Tensor:
    """Apply Slideflow's augmentation letters to one uint8 image, deterministically for `seed`
    (an int64 pair; the loaders derive it from their seed, the epoch and the element index)."""
    if "n" in augment:
        image = stain(image, seed)
    if "j" in augment:
        quality = tf.cast(50 + tf.floor(_uniform(seed, 1) * 50), tf.int32)
        image = tf.cond(_uniform(seed, 2) < 0.5,
                        lambda: tf.image.adjust_jpeg_quality(image, quality),
                        lambda: image)
    if "r" in augment:
        image = tf.image.rot90(image, tf.cast(tf.floor(_uniform(seed, 3) * 4), tf.int32))
    if "x" in augment:
        image = tf.cond(_uniform(seed, 4) < 0.5, lambda: tf.image.flip_left_right(image),
                        lambda: image)
    if "y" in augment:
        image = tf.cond(_uniform(seed, 5) < 0.5, lambda: tf.image.flip_up_down(image),
                        lambda: image)
    if "b" in augment:
        u = _uniform(seed, 6)
        image = tf.case([(u < 0.1 * 0.125, lambda: gaussian_blur(image, 8.0)),
                         (u < 0.1 * 0.25, lambda: gaussian_blur(image, 4.0)),
                         (u < 0.1 * 0.5, lambda: gaussian_blur(image, 2.0)),
                         (u < 0.1, lambda: gaussian_blur(image, 1.0))],
                        default=lambda: image)
    return image


class _StainJitter:
    """'n': normalise each tile to a randomly jittered version of a Reinhard normaliser's fit.

    The target LAB means and stds are multiplied by factors drawn uniformly in
    [1 - jitter, 1 + jitter] per channel (default 0.1), from the element's seed.
    """

    def __init__(self, normalizer: Any, jitter: float = 0.1):
        fit = normalizer.get_fit() if normalizer is not None else None
        if not fit or "target_means" not in fit:
            raise ValueError("augment 'n' (stain augmentation) needs a Reinhard normalizer: "
                             "normalizer=sf.norm.autoselect('reinhard_fast')")
        self.normalizer = normalizer
        self.means = np.asarray(fit["target_means"], np.float32)
        self.stds = np.asarray(fit["target_stds"], np.float32)
        self.jitter = float(jitter)

    def _numpy(self, image: np.ndarray, factors: np.ndarray) -> np.ndarray:
        norm = type(self.normalizer)(self.normalizer.method)  # a fresh one, same method
        norm.set_fit(target_means=self.means * factors[:3], target_stds=self.stds * factors[3:])
        return norm.transform(image)

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        factors = tf.random.stateless_uniform([6], seed=seed + tf.constant([0, 7], tf.int64),
                                              minval=1 - self.jitter, maxval=1 + self.jitter)
        out = tf.numpy_function(self._numpy, [image, factors], tf.uint8, stateful=False)
        out.set_shape(image.shape)
        return out
