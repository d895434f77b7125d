"""Preprocessing defences: ART's NumPy preprocessors, wrapped for uint8 datasets.

Each defence here is ART's own implementation (``SpatialSmoothing``, ``JpegCompression``,
``GaussianAugmentation``), which are correct in ART 1.20.1 (its ``SpatialSmoothingTensorFlowV2``
is not: it crashes with ``clip_values``). Images go to ART as float32 in [0, 1] and come back
rounded to uint8. Tests check that the results equal ART's on the same input.

``apply_fit`` / ``apply_predict`` keep ART's meaning: apply the defence to data used for training /
for prediction. A defence component is told which its input is (``data_role``) and passes the data
through unchanged when the defence does not apply to that role.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from advpatch import params

DEFENCES = ("spatial_smoothing", "jpeg_compression", "gaussian_augmentation")


def applies(apply_fit: bool, apply_predict: bool, data_role: str) -> bool:
    params.check(data_role=data_role)
    return apply_fit if data_role == "fit" else apply_predict


def check_gaussian(perform_data_augmentation: bool, apply_fit: bool, apply_predict: bool) -> None:
    """ART's rule: augmentation adds training samples, so it applies at fit time only."""
    params.require(
        not perform_data_augmentation or (apply_fit and not apply_predict),
        "gaussian_augmentation_perform_data_augmentation=True adds training images, so it needs "
        f"gaussian_augmentation_apply_fit=True and gaussian_augmentation_apply_predict=False, got "
        f"apply_fit={apply_fit} and apply_predict={apply_predict}",
    )


def spatial_smoothing(window_size: int, apply_fit: bool = False, apply_predict: bool = True) -> Callable:
    from art.defences.preprocessor import SpatialSmoothing

    params.check(spatial_smoothing_window_size=window_size)
    art = SpatialSmoothing(window_size=window_size, channels_first=False, clip_values=(0.0, 1.0),
                           apply_fit=apply_fit, apply_predict=apply_predict)
    return lambda x: art(x)[0]


def jpeg_compression(quality: int, channels_first: bool = False, apply_fit: bool = False,
                     apply_predict: bool = True) -> Callable:
    """advpatch data is channels-last; with ``channels_first`` the call is made in NCHW layout
    (transposed there and back), which gives the same images."""
    from art.defences.preprocessor import JpegCompression

    params.check(jpeg_compression_quality=quality)
    art = JpegCompression(clip_values=(0.0, 1.0), quality=quality, channels_first=channels_first,
                          apply_fit=apply_fit, apply_predict=apply_predict)
    if channels_first:
        return lambda x: art(x.transpose(0, 3, 1, 2))[0].transpose(0, 2, 3, 1)
    return lambda x: art(x)[0]


def gaussian_noise(sigma: float, apply_fit: bool = False, apply_predict: bool = True) -> Callable:
    """Noisy copies of the images (ART's GaussianAugmentation with augmentation=False). ART draws
    from NumPy's global generator, so callers seed it (:func:`seeded`)."""
    from art.defences.preprocessor import GaussianAugmentation

    params.check(gaussian_augmentation_sigma=sigma)
    art = GaussianAugmentation(sigma=sigma, augmentation=False, clip_values=(0.0, 1.0),
                               apply_fit=apply_fit, apply_predict=apply_predict)
    return lambda x: art(x)[0]


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
