"""Model architectures: every model :func:`build_model` makes takes float32 images in ``[0, 1]``
(``[batch, H, W, C]``) and returns class probabilities, with its logits in the layer
:data:`LOGITS_LAYER`."""

from __future__ import annotations

from typing import Any, Dict, Sequence

from advpatch import params
from advpatch.errors import ModelError

LOGITS_LAYER = "logits"
"""The name of the layer whose output is the logits, in every model :func:`build_model` makes."""

MIN_IMAGE_SIZE = {"le_net": 12, "shallow_net": 1, "conv_net": 4, "alex_net": 16, "resnet50": 32, "vgg16": 32}
"""Smallest height/width each architecture's layers can take."""



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


def build_model(architecture: str, input_shape: Sequence[int], num_classes: int) -> Any:
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
    elif architecture == "conv_net":
        # A small VGG-style network for small images: two blocks of two 3x3 convolutions (32, then 64
        # filters) and max pooling, then 128 units with dropout. The certified defences' base
        # classifier on 28x28 digits (masked or ablated views need more than LeNet's capacity).
        x = inputs
        for filters in (32, 64):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.3)(x)
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


def make_optimizer(name: str, learning_rate: float) -> Any:
    params.check(optimizer=name, learning_rate=learning_rate)
    import keras

    cls = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "sgd": keras.optimizers.SGD,
    }[name]
    return cls(learning_rate=learning_rate)


def preprocessing_layer() -> Any:
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
        def __init__(self, mode: str = "caffe", **kwargs: Any) -> None:
            super().__init__(**kwargs)
            params.check(preprocessing=mode)
            self.mode = mode

        def call(self, x: Any) -> Any:
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

        def get_config(self) -> Dict[str, Any]:
            return {**super().get_config(), "mode": self.mode}

    return Preprocessing


# --------------------------------------------------------------------------- which model a step uses
