"""Pretrained and users' own models: Keras' ImageNet applications from a local weights file, and a
user's ``.keras`` file, each wrapped so that it takes [0, 1] images like every advpatch model (its
preprocessing inside it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Tuple

from advpatch import params
from advpatch.errors import ModelError
from advpatch.models.architectures import LOGITS_LAYER, preprocessing_layer
from advpatch.models.artifact import PREPROCESSING, ModelInfo, load_keras
from advpatch.models.keras_file import check_model_file

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


def check_weights(architecture: str, path: os.PathLike[str] | str) -> None:
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


def pretrained_model(architecture: str, weights: os.PathLike[str] | str,
                     class_names: Sequence[str]) -> Tuple[Any, ModelInfo]:
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


def user_model(path: os.PathLike[str] | str, preprocessing: str, image_shape: Sequence[int],
               class_names: Sequence[str]) -> Tuple[Any, ModelInfo]:
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
