"""Preprocessing defences as classifier transforms (see :mod:`advpatch.models.classifier`).

Each defence's forward pass does exactly what ART 1.20.1's numpy preprocessor does
(``SpatialSmoothing``, ``JpegCompression``, ``GaussianAugmentation``; its
``SpatialSmoothingTensorFlowV2`` crashes with ``clip_values``), written out here so a defence task
does not pay for importing ART (1.7 s); tests check the results equal ART's, byte for byte, on the
same input.

A defence is used two ways: on a dataset (the ``spatial_smoothing``, ``jpeg_compression`` and
``gaussian_augmentation`` steps, images rounded back to uint8), or in front of a model inside a
:class:`~advpatch.models.classifier.Classifier`, where an attack sees it: straight-through gradients
for the median filter and JPEG, a fresh draw per call for the noise.

``apply_fit`` / ``apply_predict`` keep ART's meaning: apply the defence to data used for training /
for prediction. A defence step is told which its input is (``data_role``) and passes the data
through unchanged when the defence does not apply to that role.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

import numpy as np

from advpatch import params
from advpatch.models.classifier import Transform

DEFENCES = ("spatial_smoothing", "jpeg_compression", "gaussian_augmentation")


def applies(apply_fit: bool, apply_predict: bool, data_role: str) -> bool:
    params.check(data_role=data_role)
    return apply_fit if data_role == "fit" else apply_predict


class SpatialSmoothing(Transform):
    """A median filter over ``window_size`` x ``window_size`` pixels, each channel on its own."""

    name = "spatial_smoothing"
    gradient = "straight_through"

    def __init__(self, window_size: int) -> None:
        params.check(spatial_smoothing_window_size=window_size)
        self.window_size = window_size

    def numpy(self, x: np.ndarray) -> np.ndarray:
        from scipy.ndimage import median_filter

        w = self.window_size
        return np.clip(median_filter(x, size=(1, w, w, 1), mode="reflect"), 0.0, 1.0)

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "spatial_smoothing_window_size": self.window_size}


class JpegCompression(Transform):
    """JPEG compression and decompression at ``quality`` (grayscale or RGB).

    advpatch data is channels-last; with ``channels_first`` the call is made in NCHW layout
    (transposed there and back), which gives the same images."""

    name = "jpeg_compression"
    gradient = "straight_through"

    def __init__(self, quality: int, channels_first: bool = False) -> None:
        params.check(jpeg_compression_quality=quality)
        self.quality, self.channels_first = quality, channels_first

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """As ART: pixels to uint8 by truncating ``x * 255``, each image compressed as RGB (3
        channels) or each channel as grayscale, decoded, divided by 255."""
        import io

        from PIL import Image

        def compress(image: np.ndarray, mode: str) -> np.ndarray:
            buf = io.BytesIO()
            Image.fromarray(image, mode=mode).save(buf, format="jpeg", quality=self.quality)
            return np.array(Image.open(buf))

        pixels = (x * 255).astype("uint8")
        out = pixels.copy()
        for i in range(len(pixels)):
            if pixels.shape[-1] == 3:
                out[i] = compress(pixels[i], "RGB")
            else:
                for c in range(pixels.shape[-1]):
                    out[i, ..., c] = compress(pixels[i, ..., c], "L")
        return (out / 255.0).astype(np.float32)

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "jpeg_compression_quality": self.quality}


class GaussianNoise(Transform):
    """Gaussian noise of standard deviation ``sigma``, clipped to [0, 1] (ART's
    GaussianAugmentation with ``augmentation=False``).

    On datasets ART draws from NumPy's global generator, so callers seed it (:func:`seeded`); in a
    classifier each call draws from a TensorFlow generator seeded with ``seed``."""

    name = "gaussian_augmentation"
    gradient = "expectation"

    def __init__(self, sigma: float, seed: int = 0) -> None:
        params.check(gaussian_augmentation_sigma=sigma, seed=seed)
        self.sigma, self.seed = sigma, seed
        self._generator = None

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """As ART: noise from NumPy's global generator, float32, clipped to [0, 1]."""
        noisy = np.random.normal(x, scale=self.sigma, size=x.shape).astype(np.float32)
        return np.clip(noisy, 0.0, 1.0)

    def graph(self, x):
        import tensorflow as tf

        if self._generator is None:
            with tf.init_scope():  # created once, eagerly, even when first called inside a tf.function
                self._generator = tf.random.Generator.from_seed(self.seed)
        noise = self._generator.normal(tf.shape(x), stddev=self.sigma, dtype=x.dtype)
        return tf.clip_by_value(x + noise, 0.0, 1.0)

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "gaussian_augmentation_sigma": self.sigma}


def from_params(defence: str, values: Mapping[str, Any]) -> Transform:
    """The transform a defence step's parameters (as in the parameter table) describe."""
    params.require(defence in DEFENCES, f"defence must be one of {', '.join(map(repr, DEFENCES))}, got {defence!r}")
    if defence == "spatial_smoothing":
        return SpatialSmoothing(values["spatial_smoothing_window_size"])
    if defence == "jpeg_compression":
        return JpegCompression(values["jpeg_compression_quality"], values.get("jpeg_compression_channels_first", False))
    return GaussianNoise(values["gaussian_augmentation_sigma"], values.get("seed", 0))


def seeded(fn: Callable, seed: int) -> Callable:
    """Run ``fn`` with NumPy's global generator seeded, restoring its state afterwards."""

    def call(x):
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            return fn(x)
        finally:
            np.random.set_state(state)

    return call


def augmentation_indices(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Which images get a noisy extra copy: ``round(ratio * n)`` of them, drawn with replacement
    as ART does."""
    params.check(gaussian_augmentation_ratio=ratio)
    return np.sort(rng.integers(0, n, int(round(ratio * n))))
