"""Preprocessing defences: one self-describing object each, behind the classifier interface (see
:mod:`advpatch.models.classifier`).

A :class:`Defence` (kind ``preprocessing`` of :class:`advpatch.defences.base.Defence`) is a
:class:`~advpatch.models.classifier.Transform` that also says what it is:
its ``name`` (its step and component), its ``label`` (its row in a comparison table), its
parameters (the parameter table's :data:`~advpatch.params.PREPROCESSING_DEFENCES` entry, the first
being the one pipelines and adaptive attacks set), how it is built from them, when it applies
(ART's ``apply_fit`` / ``apply_predict``) and whether it adds images. :func:`registered` finds
every defence in this package's modules, so the steps, the components, the pipelines, the report
and the adaptive attacks need no list of them: a new defence is its class (in a module of its own
here), its parameters' table entry, and its tests.

Each defence's forward pass does exactly what ART 1.20.1's numpy preprocessor does
(``SpatialSmoothing``, ``JpegCompression``, ``GaussianAugmentation``, ``FeatureSqueezing``; its
``SpatialSmoothingTensorFlowV2`` crashes with ``clip_values``), written out here so a defence task
does not pay for importing ART (1.7 s); tests check the results equal ART's, byte for byte.

A defence is used two ways: on a dataset (its step, images rounded back to uint8), or in front of a
model inside a :class:`~advpatch.models.classifier.Classifier`, where an attack sees it:
straight-through gradients for the median filter, JPEG and bit-depth reduction, a fresh draw per
call for the noise.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type

import numpy as np

from advpatch import parallel, params
from advpatch.defences import base
from advpatch.models.classifier import Classifier, Transform


class Defence(base.Defence, Transform):
    """A preprocessing defence: a transform that says what it is and how it is set (its ``name`` is
    also its step's and its component's, whose summary is its ``summary``)."""

    kind = "preprocessing"
    notes: ClassVar[str] = ""
    """What its component's README says about where it comes from and what it keeps of the seed's."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.component = cls.name

    @classmethod
    def parameters(cls) -> Tuple[str, ...]:
        """Its own parameters, from the parameter table; the first is the one a pipeline sets."""
        return params.PREPROCESSING_DEFENCES[cls.name]

    @classmethod
    def setting(cls) -> str:
        return cls.parameters()[0]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Defence":
        """The defence its parameters ``values`` (by their table names) describe."""
        raise NotImplementedError

    @classmethod
    def applies(cls, values: Mapping[str, Any], data_role: str) -> bool:
        """Whether it applies to data used for ``data_role`` (ART's ``apply_fit``/``apply_predict``)."""
        params.check(data_role=data_role)
        return bool(values[f"{cls.name}_apply_fit" if data_role == "fit" else f"{cls.name}_apply_predict"])

    @classmethod
    def augmentation(cls, values: Mapping[str, Any]) -> Optional[float]:
        """``None``: the defence replaces the images; else it adds defended copies of this share of
        them (data augmentation, training data only)."""
        return None

    @classmethod
    def classifier(cls, model: Classifier, values: Mapping[str, Any]) -> Classifier:
        """``model`` with this defence in front of it (what an adaptive attacker optimizes through)."""
        return model.with_transforms(cls.from_values(values))

    def on_images(self, x: np.ndarray, seed: int) -> np.ndarray:
        """The defence on uint8 images (what its step does to a dataset, batch by batch), with NumPy's
        global generator seeded with ``seed`` for its draws: the reference pass on [0, 1] floats,
        rounded back. A defence may do the same faster on the pixels themselves."""
        from advpatch.data.dataset import to_float, to_uint8

        return to_uint8(seeded(self.numpy, seed)(to_float(x)))


def registered() -> Dict[str, Type[Defence]]:
    """Every preprocessing defence, by name, in the order of the parameter table (each module of
    :mod:`advpatch.defences` is imported, so a defence in a module of its own is found)."""
    found = {name: cls for name, cls in base.registered("preprocessing").items() if issubclass(cls, Defence)}
    unknown = sorted(set(found) ^ set(params.PREPROCESSING_DEFENCES))
    if unknown:
        raise TypeError(f"defences and the parameter table's PREPROCESSING_DEFENCES differ: {unknown}")
    return {name: found[name] for name in params.PREPROCESSING_DEFENCES}


class SpatialSmoothing(Defence):
    """A median filter over ``window_size`` x ``window_size`` pixels, each channel on its own (ART's
    SpatialSmoothing)."""

    name = "spatial_smoothing"
    label = "spatial smoothing"
    summary = "Median filtering over a window (ART SpatialSmoothing)"
    notes = """The seed's spatial_smoothing entry point. The filter is ART's NumPy `SpatialSmoothing` (its TF v2
        version crashes with clip values); tests check the output equals ART's. The seed's
        `model`/`model_architecture` parameters are not needed (a defence on data does not
        use the model), and its `load_dataset_from_mlruns`, `dataset_run_id`, `dataset_tar_name` and
        `dataset_name` are a `load_dataset` source here (`mlflow-run://RUN_ID/TAR_NAME#FOLDER`)."""
    gradient = "straight_through"

    def __init__(self, window_size: int) -> None:
        params.check(spatial_smoothing_window_size=window_size)
        self.window_size = window_size

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "SpatialSmoothing":
        return cls(values["spatial_smoothing_window_size"])

    def numpy(self, x: np.ndarray) -> np.ndarray:
        from scipy.ndimage import median_filter

        w = self.window_size
        smoothed: np.ndarray = np.clip(median_filter(x, size=(1, w, w, 1), mode="reflect"), 0.0, 1.0)
        return smoothed

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "spatial_smoothing_window_size": self.window_size}


class JpegCompression(Defence):
    """JPEG compression and decompression at ``quality``, grayscale or RGB (ART's JpegCompression).

    advpatch data is channels-last; with ``channels_first`` (the seed's flag) the images are
    compressed in NCHW layout, transposed there and back, which gives the same images."""

    name = "jpeg_compression"
    label = "JPEG compression"
    summary = "JPEG compression and decompression (ART JpegCompression), grayscale or RGB"
    notes = """The seed's jpeg_compression entry point. The compression is ART's `JpegCompression`
        (channels-last; `jpeg_compression_channels_first` compresses in NCHW layout, the same images);
        tests check the output equals ART's. The seed's `model`/`model_architecture` parameters are
        not needed (a defence on data does not
        use the model), and its `load_dataset_from_mlruns`, `dataset_run_id`, `dataset_tar_name` and
        `dataset_name` are a `load_dataset` source here (`mlflow-run://RUN_ID/TAR_NAME#FOLDER`)."""
    gradient = "straight_through"

    def __init__(self, quality: int, channels_first: bool = False) -> None:
        params.check(jpeg_compression_quality=quality)
        self.quality, self.channels_first = quality, channels_first

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "JpegCompression":
        return cls(values["jpeg_compression_quality"], values.get("jpeg_compression_channels_first", False))

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """As ART: pixels to uint8 by truncating ``x * 255``, each image compressed as RGB (3
        channels) or each channel as grayscale, decoded, divided by 255."""
        return (self._jpeg((x * 255).astype("uint8")) / 255.0).astype(np.float32)

    def on_images(self, x: np.ndarray, seed: int) -> np.ndarray:
        """On uint8 images the float round trip is the identity (``to_float`` then truncating ``*
        255`` gives every byte back, and so does rounding the decoded pixels over 255: a test checks
        all 256), so the pixels go straight to the codec, on every core (Pillow releases the GIL
        while it encodes and decodes): the same bytes as :meth:`numpy`'s path, and as ART's."""
        return self._jpeg(np.ascontiguousarray(x), workers=parallel.workers())

    def _jpeg(self, pixels: np.ndarray, workers: int = 1) -> np.ndarray:
        """Each image of uint8 ``pixels`` [n, H, W, C] compressed and decoded
        (:func:`advpatch.io.jpeg.round_trip`: Pillow's codec, the bytes of its public API)."""
        from advpatch.io.jpeg import round_trip

        if self.channels_first:  # NCHW: each image's channels on axis 1
            pixels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        channels = pixels.shape[1] if self.channels_first else pixels.shape[-1]
        out = np.empty_like(pixels)

        def one(i: int) -> None:
            if channels == 3:
                if self.channels_first:
                    out[i] = round_trip(np.ascontiguousarray(pixels[i].transpose(1, 2, 0)), self.quality
                                        ).transpose(2, 0, 1)
                else:
                    round_trip(pixels[i], self.quality, out[i])
                return
            for c in range(channels):
                if self.channels_first:
                    round_trip(pixels[i, c], self.quality, out[i, c])
                else:
                    round_trip(np.ascontiguousarray(pixels[i, ..., c]), self.quality, out[i, ..., c])

        parallel.in_parallel(one, len(pixels), workers)
        return out.transpose(0, 2, 3, 1) if self.channels_first else out

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "jpeg_compression_quality": self.quality}  # the layout changes nothing


class GaussianNoise(Defence):
    """Gaussian noise of standard deviation ``sigma``, clipped to [0, 1] (ART's
    GaussianAugmentation; with data augmentation, noisy copies are added to training data instead).

    On datasets ART draws from NumPy's global generator, so callers seed it (:func:`seeded`); in a
    classifier each call draws from a TensorFlow generator seeded with ``seed``."""

    name = "gaussian_augmentation"
    label = "Gaussian noise"
    summary = "Gaussian noise (ART GaussianAugmentation)"
    notes = """The seed's gaussian_augmentation entry point. Noisy images replace the originals or, with data
        augmentation (training data only), noisy copies of round(ratio * n) images are added after the
        originals (an `augmented` column marks them). The noise is ART's `GaussianAugmentation`, drawn
        from `seed`; tests check the output equals ART's. The seed's `model`/`model_architecture`
        parameters are not needed (a defence on data does not
        use the model), and its `load_dataset_from_mlruns`, `dataset_run_id`, `dataset_tar_name` and
        `dataset_name` are a `load_dataset` source here (`mlflow-run://RUN_ID/TAR_NAME#FOLDER`)."""
    gradient = "expectation"

    def __init__(self, sigma: float, seed: int = 0) -> None:
        params.check(gaussian_augmentation_sigma=sigma, seed=seed)
        self.sigma, self.seed = sigma, seed
        self._generator: Any = None  # a tf.random.Generator, made on first use

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "GaussianNoise":
        return cls(values["gaussian_augmentation_sigma"], values.get("seed", 0))

    @classmethod
    def augmentation(cls, values: Mapping[str, Any]) -> Optional[float]:
        augments = values["gaussian_augmentation_perform_data_augmentation"]
        return float(values["gaussian_augmentation_ratio"]) if augments else None

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """As ART: noise from NumPy's global generator, float32, clipped to [0, 1]."""
        noisy = np.random.normal(x, scale=self.sigma, size=x.shape).astype(np.float32)
        return np.clip(noisy, 0.0, 1.0)

    def graph(self, x: Any) -> Any:
        import tensorflow as tf

        if self._generator is None:
            with tf.init_scope():  # created once, eagerly, even when first called inside a tf.function
                self._generator = tf.random.Generator.from_seed(self.seed)
        noise = self._generator.normal(tf.shape(x), stddev=self.sigma, dtype=x.dtype)
        return tf.clip_by_value(x + noise, 0.0, 1.0)

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "gaussian_augmentation_sigma": self.sigma}


def from_params(defence: str, values: Mapping[str, Any]) -> Defence:
    """The defence named ``defence`` as its parameters ``values`` (by their table names) set it."""
    defences = registered()
    params.require(defence in defences, f"defence must be one of {', '.join(map(repr, defences))}, got {defence!r}")
    return defences[defence].from_values(values)


def seeded(fn: Callable[[np.ndarray], np.ndarray], seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Run ``fn`` with NumPy's global generator seeded, restoring its state afterwards."""

    def call(x: np.ndarray) -> np.ndarray:
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
    return np.sort(rng.integers(0, n, round(ratio * n)))
