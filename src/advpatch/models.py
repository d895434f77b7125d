"""Model architectures and the Model artifact.

Every advpatch model takes float32 images in ``[0, 1]`` (``[batch, H, W, C]``) and returns class
probabilities. Anything an architecture needs beyond that (ImageNet mean subtraction for
pretrained weights) lives inside the model, so attacks, defences and inference never need to know.

Model artifact layout (format ``advpatch-model``, version 1)::

    <model>/
      model.keras     Keras 3 archive (loaded with safe_mode=True: no Python lambdas)
      model.json      architecture, input_shape, class_names, preprocessing, provenance
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from advpatch import params
from advpatch.files import atomic_dir, read_manifest
from advpatch.keras_file import ModelError, check_model_file, make_reproducible

FORMAT = "advpatch-model"
VERSION = 1
KERAS_FILE = "model.keras"
META_FILE = "model.json"
PREPROCESSING = "float32 in [0, 1]"
LOGITS_LAYER = "logits"
"""The name of the layer whose output is the logits, in every model :func:`build_model` makes."""

MIN_IMAGE_SIZE = {"le_net": 12, "shallow_net": 1, "alex_net": 16, "resnet50": 32, "vgg16": 32}
"""Smallest height/width each architecture's layers can take."""


@dataclass
class ModelInfo:
    """What ``model.json`` says about a model."""

    architecture: str
    input_shape: Tuple[int, int, int]
    class_names: List[str]
    preprocessing: str = PREPROCESSING
    provenance: Dict[str, Any] = field(default_factory=dict)
    logits_layer: Optional[str] = LOGITS_LAYER
    """The layer giving the logits before the final softmax (attacks optimize on logits), or
    ``None`` when the model exposes only probabilities."""

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_json(cls, data: Dict[str, Any], where: str) -> "ModelInfo":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ModelError(f"{where} is not an {FORMAT} v{VERSION} manifest")
        info = cls(
            architecture=str(data["architecture"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),  # type: ignore[arg-type]
            class_names=[str(c) for c in data["class_names"]],
            preprocessing=str(data.get("preprocessing", PREPROCESSING)),
            provenance=dict(data.get("provenance", {})),
            logits_layer=data.get("logits_layer", LOGITS_LAYER),
        )
        if len(info.input_shape) != 3 or min(info.input_shape) < 1 or not info.class_names \
                or not isinstance(info.logits_layer, (str, type(None))):
            raise ModelError(f"{where}: input_shape {list(info.input_shape)}, {len(info.class_names)} classes or "
                             f"logits_layer {info.logits_layer!r} is not usable")
        return info

    def shape_text(self) -> str:
        return "x".join(map(str, self.input_shape))


def check_buildable(architecture: str, image_shape: Sequence[int]) -> None:
    """Fail early, naming both, when ``image_shape`` cannot go through ``architecture``."""
    params.check(model_architecture=architecture)
    h, w, c = image_shape
    smallest = MIN_IMAGE_SIZE[architecture]
    if min(h, w) < smallest:
        raise ModelError(
            f"model_architecture {architecture!r} needs images of at least {smallest}x{smallest}, "
            f"but the dataset has {h}x{w}x{c}: pick another architecture or load the data with image_size >= {smallest}"
        )


def build_model(architecture: str, input_shape: Sequence[int], num_classes: int):
    """A fresh, randomly initialised Keras model (seed it with ``keras.utils.set_random_seed``)."""
    check_buildable(architecture, input_shape)
    import keras
    from keras import layers

    shape = tuple(int(d) for d in input_shape)
    inputs = keras.Input(shape=shape, name="image")
    if architecture == "le_net":
        # LeNet-5 (LeCun et al. 1998), ReLU and max pooling; first convolution padded as for 28x28.
        x = layers.Conv2D(6, 5, padding="same", activation="relu")(inputs)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Conv2D(16, 5, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(120, activation="relu")(x)
        x = layers.Dense(84, activation="relu")(x)
    elif architecture == "shallow_net":
        x = layers.Flatten()(inputs)
        x = layers.Dense(128, activation="relu")(x)
    elif architecture == "alex_net":
        # AlexNet (Krizhevsky et al. 2012) with batch norm; the stride-4 stem only for large images.
        stride, kernel = (4, 11) if min(shape[:2]) >= 96 else (1, 5)
        x = layers.Conv2D(96, kernel, strides=stride, padding="same", activation="relu")(inputs)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Conv2D(256, 5, padding="same", activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Conv2D(384, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(384, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(256, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Flatten()(x)
        for _ in range(2):
            x = layers.Dense(4096, activation="relu")(x)
            x = layers.Dropout(0.5)(x)
    else:
        app = {"resnet50": keras.applications.ResNet50, "vgg16": keras.applications.VGG16}[architecture]
        backbone = app(include_top=False, weights=None, input_shape=shape, pooling="avg")
        x = backbone(inputs)
    logits = layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    outputs = layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=architecture)


def make_optimizer(name: str, learning_rate: float):
    params.check(optimizer=name, learning_rate=learning_rate)
    import keras

    cls = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "sgd": keras.optimizers.SGD,
    }[name]
    return cls(learning_rate=learning_rate)


def save_model(model, info: ModelInfo, path: os.PathLike | str) -> None:
    """Write the Model artifact folder atomically (a temporary folder renamed into place); the
    same weights give the same bytes (:func:`advpatch.keras_file.make_reproducible`)."""
    with atomic_dir(path) as tmp:
        model.save(tmp / KERAS_FILE)
        make_reproducible(tmp / KERAS_FILE)
        (tmp / META_FILE).write_text(json.dumps(info.to_json(), indent=1))


def read_model_info(path: os.PathLike | str) -> ModelInfo:
    """The metadata alone: cheap, no TensorFlow import."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        raise ModelError(f"{path} is not a model artifact: {META_FILE} is missing")
    return read_manifest(meta, ModelError, "model manifest", lambda data: ModelInfo.from_json(data, str(meta)))


def load_keras(path: os.PathLike | str):
    """A ``.keras`` file, loaded with ``safe_mode=True`` (no Python lambdas, no pickle)."""
    import keras

    preprocessing_layer()  # advpatch's own layers, registered before Keras looks them up
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError) as e:
        raise ModelError(f"cannot load {path} as a Keras model: {e}") from None


def load_model(path: os.PathLike | str):
    """(keras model, ModelInfo) from a Model artifact folder."""
    info = read_model_info(path)
    return load_keras(Path(path) / KERAS_FILE), info


# --------------------------------------------------------------------------- pretrained and users' models
IMAGENET_SHAPE = (224, 224, 3)
IMAGENET_WEIGHTS = {"resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5"}
"""The weights files Keras publishes for each architecture (with the 1,000-class top), by name."""
IMAGENET_MODE = {"resnet50": "caffe", "vgg16": "caffe"}
"""Each architecture's ImageNet preprocessing (``keras.applications.<arch>.preprocess_input``)."""
_FIRST_CONV = {"resnet50": "conv1_conv", "vgg16": "block1_conv1"}
PREPROCESSING_TEXT = {
    "none": PREPROCESSING,
    "scale_255": "x * 255 (inside the model)",
    "caffe": "imagenet caffe: x * 255, RGB to BGR, minus the ImageNet mean (inside the model)",
    "tf": "imagenet tf: x * 2 - 1 (inside the model)",
    "torch": "imagenet torch: minus the ImageNet mean, over its std (inside the model)",
}
"""What each preprocessing mode does, as ``model.json`` records it: every model still takes [0, 1]."""
CUSTOM = "custom"
"""The architecture a user's own model is recorded as."""


def check_weights(architecture: str, path: os.PathLike | str) -> None:
    """A Keras ImageNet weights file for ``architecture``, with its classification top: checked from
    the file's layer names alone (milliseconds, before TensorFlow is imported)."""
    import h5py

    if architecture not in IMAGENET_WEIGHTS:
        raise ModelError(f"model_architecture must be one of {', '.join(IMAGENET_WEIGHTS)} for pretrained "
                         f"weights, got {architecture!r}")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist (expected Keras' {IMAGENET_WEIGHTS[architecture]})")
    if not h5py.is_hdf5(path):
        raise ModelError(f"weights file {path} is not an HDF5 file (corrupt, or not Keras weights)")
    try:
        with h5py.File(path, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("layer_names", [])]
    except OSError as e:
        raise ModelError(f"cannot read weights file {path}: {e}") from None
    if _FIRST_CONV[architecture] not in names:
        other = [a for a, layer in _FIRST_CONV.items() if layer in names]
        what = f"{other[0]} weights" if other else "not Keras application weights"
        raise ModelError(f"weights file {path} holds {what}, not {architecture}'s")
    if "predictions" not in names:
        raise ModelError(f"weights file {path} has no classification top (a '_notop' file?); "
                         f"use {IMAGENET_WEIGHTS[architecture]}")


def pretrained_model(architecture: str, weights: os.PathLike | str, class_names: Sequence[str]):
    """(keras model, ModelInfo): a Keras application with ImageNet weights from a local file (or,
    with ``weights=""``, Keras' own download), its preprocessing inside (it takes float32 images in
    [0, 1], 224x224 RGB, as every advpatch model does) and its last Dense layer, ``predictions``,
    giving the logits before a softmax."""
    if weights:
        check_weights(architecture, weights)
    if len(class_names) != 1000:
        raise ModelError(f"{architecture}'s ImageNet weights have 1,000 classes but the data has {len(class_names)}: "
                         "load it with class_index=imagenet_class_index.json")
    import keras

    inputs = keras.Input(shape=IMAGENET_SHAPE, name="image")
    mode = IMAGENET_MODE[architecture]
    x = preprocessing_layer()(mode, name="imagenet_preprocessing")(inputs)
    app = {"resnet50": keras.applications.ResNet50, "vgg16": keras.applications.VGG16}[architecture]
    try:
        backbone = app(weights=str(weights) if weights else "imagenet", input_tensor=x, classifier_activation=None)
    except ValueError as e:  # e.g. a file whose layers do not match the architecture's shapes
        raise ModelError(f"cannot load weights file {weights} into {architecture}: {e}") from None
    except Exception as e:  # Keras' download: no network here
        raise ModelError(f"cannot download {architecture}'s ImageNet weights ({type(e).__name__}: {e}); give weights="
                         f"a local path or s3:// URI of {IMAGENET_WEIGHTS[architecture]}") from None
    outputs = keras.layers.Softmax(name="probabilities")(backbone.output)
    info = ModelInfo(architecture, IMAGENET_SHAPE, list(class_names), PREPROCESSING_TEXT[mode],
                     provenance={"weights": Path(weights).name if weights else "imagenet (Keras download)",
                                 "preprocessing": mode}, logits_layer="predictions")
    return keras.Model(inputs, outputs, name=architecture), info


def user_model(path: os.PathLike | str, preprocessing: str, image_shape: Sequence[int], class_names: Sequence[str]):
    """(keras model, ModelInfo): a user's ``.keras`` file, checked against the data (loads with
    ``safe_mode=True``; takes images of the data's size and channels; one output per class), wrapped
    so that it takes [0, 1] pixels (``preprocessing`` inside) and returns probabilities, with a
    ``logits`` layer when the user's model returns logits (its last layer is not a softmax)."""
    params.check(preprocessing=preprocessing)
    path = Path(path)
    check_model_file(path)
    import keras

    net = load_keras(path)
    shape = tuple(int(d) for d in image_shape)
    got_in = tuple(net.input_shape[1:]) if not isinstance(net.input_shape, list) else None
    if got_in is None or len(got_in) != 3 or any(g not in (None, s) for g, s in zip(got_in, shape)):
        raise ModelError(f"model file {path} takes inputs {net.input_shape}, but the data's images are "
                         f"{'x'.join(map(str, shape))}: load the data with the model's image_size and color_mode")
    out = net.output_shape
    if isinstance(out, list) or len(out) != 2 or out[-1] != len(class_names):
        raise ModelError(f"model file {path} outputs {out}, but the data has {len(class_names)} classes: a model "
                         "here outputs one probability or logit per class (batch, classes)")
    last = net.layers[-1]
    probabilities = isinstance(last, keras.layers.Softmax) or \
        getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
    inputs = keras.Input(shape=shape, name="image")
    x = preprocessing_layer()(preprocessing, name="preprocessing")(inputs) if preprocessing != "none" else inputs
    x = net(x)
    if not probabilities:
        x = keras.layers.Identity(name=LOGITS_LAYER)(x)
        x = keras.layers.Softmax(name="probabilities")(x)
    info = ModelInfo(CUSTOM, shape, list(class_names), PREPROCESSING_TEXT[preprocessing],  # type: ignore[arg-type]
                     provenance={"model_file": path.name, "preprocessing": preprocessing, "keras_name": net.name,
                                 "outputs": "probabilities" if probabilities else "logits"},
                     logits_layer=None if probabilities else LOGITS_LAYER)
    return keras.Model(inputs, x, name=f"{CUSTOM}_{net.name}"), info


def preprocessing_layer():
    """The layer class that does a model's input preprocessing inside it, differentiably, in one of
    :data:`~advpatch.params.PREPROCESSING_MODES` (Keras' ``imagenet_utils.preprocess_input``
    modes, on [0, 1] input); a registered Keras class, so a model file that has it loads with
    ``safe_mode=True``."""
    import keras

    registered = keras.saving.get_registered_object("advpatch>Preprocessing")
    if registered is not None:
        return registered

    @keras.saving.register_keras_serializable(package="advpatch")
    class Preprocessing(keras.layers.Layer):
        def __init__(self, mode: str = "caffe", **kwargs):
            super().__init__(**kwargs)
            params.check(preprocessing=mode)
            self.mode = mode

        def call(self, x):
            ops = keras.ops
            if self.mode == "scale_255":
                return x * 255.0
            if self.mode == "tf":
                return x * 2.0 - 1.0
            if self.mode == "torch":
                mean = ops.convert_to_tensor([0.485, 0.456, 0.406], dtype=x.dtype)
                std = ops.convert_to_tensor([0.229, 0.224, 0.225], dtype=x.dtype)
                return (x - mean) / std
            if self.mode == "caffe":
                x = ops.flip(x * 255.0, axis=-1)
                return x - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
            return x

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    return Preprocessing


# --------------------------------------------------------------------------- which model a step uses
def check_choice(model_path: str, model_uri: str) -> None:
    """Exactly one model: a Model artifact or a registered one (cheap: before any heavy import)."""
    if bool(model_path) == bool(model_uri):
        raise params.ParameterError(
            "give exactly one model: a Model artifact or model_uri (models:/NAME/VERSION), "
            f"got {'both' if model_path else 'neither'}")


def check_fits(info: ModelInfo, image_shape: Sequence[int], num_classes: int, model_architecture: str = "") -> None:
    """The model against the data (and the architecture a user expects), naming both sides."""
    if model_architecture and model_architecture != info.architecture:
        raise ModelError(f"model_architecture is {model_architecture!r} but the model is a {info.architecture!r}")
    if tuple(info.input_shape) != tuple(image_shape):
        raise ModelError(
            f"the model takes {info.shape_text()} images but the dataset has {'x'.join(map(str, image_shape))}: "
            "load the data with the model's image_size and color_mode")
    if len(info.class_names) != num_classes:
        raise ModelError(f"the model has {len(info.class_names)} classes but the dataset has {num_classes}")


def precheck(model_path: str, model_uri: str, image_shape: Sequence[int], num_classes: int,
             model_architecture: str = "") -> None:
    """What can be known about the model before TensorFlow is imported: exactly one is given, and a
    Model artifact's metadata fits the data."""
    check_choice(model_path, model_uri)
    if model_path:
        check_fits(read_model_info(model_path), image_shape, num_classes, model_architecture)


def resolve(model_path: str, model_uri: str, image_shape: Sequence[int], num_classes: int,
            model_architecture: str = "") -> Tuple[Any, ModelInfo]:
    """(keras model, ModelInfo) from a Model artifact folder or a registered MLflow model, checked
    against the data (:func:`precheck` first, so an artifact that does not fit is never loaded)."""
    precheck(model_path, model_uri, image_shape, num_classes, model_architecture)
    if model_path:
        return load_model(model_path)
    import tempfile

    from advpatch.registry import download_registered_model

    with tempfile.TemporaryDirectory() as tmp:
        keras_file, meta = download_registered_model(model_uri, tmp)
        info = ModelInfo.from_json(meta, model_uri)
        check_fits(info, image_shape, num_classes, model_architecture)
        return load_keras(keras_file), info
