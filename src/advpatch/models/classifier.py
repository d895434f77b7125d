"""A classifier: a model, what it is (its :class:`~advpatch.models.ModelInfo`), and the input
transforms in front of it, in the spirit of ART's estimators and preprocessors.

Attacks, evaluation and PGD all go through a :class:`Classifier`, so a defence placed in front of a
model is there both when an attack optimizes against it and when the result is measured. With no
transforms a classifier computes exactly what the bare model does.

A :class:`Transform` maps float images in [0, 1] to images of the same shape. What an attack gets
back through it is its ``gradient``:

``exact``
    TensorFlow differentiates the transform (:meth:`Transform.graph`).
``straight_through``
    The forward pass is the reference implementation (:meth:`Transform.numpy`, run inside the graph);
    the backward pass is the identity: BPDA (Athalye, Carlini and Wagner, 2018), as ART's
    ``estimate_gradient`` does for non-differentiable preprocessors.
``expectation``
    A random transform: each call draws anew and the gradient is exact for that draw, so an attack
    that optimizes over many steps averages it over draws (EOT).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from advpatch.models import ModelInfo

GRADIENTS = ("exact", "straight_through", "expectation")


@runtime_checkable
class Predictor(Protocol):
    """The classifier interface: float32 images [n, H, W, C] in [0, 1] -> class probabilities
    (:meth:`predict`) and labels (:meth:`predict_labels`). A :class:`Classifier` is one (a model,
    with a preprocessing defence in front of it or not, or a trained-in defence's model); each
    defence gives one (:meth:`advpatch.defences.base.Defence.classifier`)."""

    @property
    def class_names(self) -> List[str]: ...

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray: ...

    def predict_labels(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


@runtime_checkable
class CertifiedPredictor(Predictor, Protocol):
    """A :class:`Predictor` whose predictions come with certificates (a certified defence's)."""

    def certify(self, x: np.ndarray, patch_size: int, predicted: Optional[np.ndarray] = None) -> np.ndarray:
        """bool [n]: which predictions (``predicted``, else this classifier's own for ``x``) no
        square patch of side ``patch_size`` anywhere on the image can change."""
        ...


class Transform:
    """An input transform in front of a model; subclasses set :attr:`name` and :attr:`gradient`."""

    name: ClassVar[str] = "transform"
    gradient: ClassVar[str] = "exact"

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """The reference forward pass on float32 images in [0, 1] (also what datasets go through)."""
        raise NotImplementedError

    def graph(self, x: Any) -> Any:
        """The forward pass as TensorFlow ops (``exact`` and ``expectation`` transforms)."""
        raise NotImplementedError

    def settings(self) -> Dict[str, Any]:
        """What the transform is, for provenance and reports."""
        return {"name": self.name}

    def __call__(self, x: Any) -> Any:
        """The forward pass inside a TensorFlow graph, with the gradient :attr:`gradient` names."""
        if self.gradient == "straight_through":
            return straight_through(self.numpy, x)
        return self.graph(x)


def straight_through(fn: Callable[[np.ndarray], np.ndarray], x: Any) -> Any:
    """``fn`` (NumPy, float32 in and out, same shape) on tensor ``x``, with the identity as its
    gradient."""
    import tensorflow as tf

    @tf.custom_gradient
    def op(t: Any) -> Any:
        out = tf.numpy_function(lambda a: np.asarray(fn(a), np.float32), [t], tf.float32, stateful=False)
        out.set_shape(t.shape)
        return out, lambda upstream: upstream

    return op(x)


class Classifier:
    """A Keras model returning class probabilities, its metadata, and transforms applied in order
    to its input."""

    def __init__(self, model: Any, info: ModelInfo, transforms: Sequence[Transform] = ()) -> None:
        self.model = model
        self.info = info
        self.transforms: List[Transform] = list(transforms)
        self._logits = _logits_model(model, info.logits_layer)

    @property
    def from_logits(self) -> bool:
        """Whether :meth:`scores` gives logits (else probabilities)."""
        return self._logits is not None

    @property
    def class_names(self) -> List[str]:
        return self.info.class_names

    def with_transforms(self, *transforms: Transform) -> "Classifier":
        """The same model with ``transforms`` added in front of this classifier's own."""
        return Classifier(self.model, self.info, [*transforms, *self.transforms])

    def preprocess(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def probabilities(self, x: Any) -> Any:
        """Class probabilities for float images ``x`` (a tensor), through the transforms."""
        return self.model(self.preprocess(x), training=False)

    def scores(self, x: Any) -> Any:
        """What an attack optimizes: logits where the model exposes them, else probabilities."""
        net = self._logits if self._logits is not None else self.model
        return net(self.preprocess(x), training=False)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities for float32 images ``x`` [n, H, W, C] (NumPy), in batches."""
        import tensorflow as tf

        forward = self.forward
        out = [forward(tf.constant(x[i:i + batch_size], tf.float32)).numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict_labels(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        labels: np.ndarray = self.predict(x, batch_size).argmax(axis=1)
        return labels

    def gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """d(cross-entropy of the true labels)/d(input) for float images ``x``, through the transforms."""
        import tensorflow as tf

        t = tf.constant(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(
                tf.constant(y), self.scores(t), from_logits=self.from_logits))
        grad: np.ndarray = tape.gradient(loss, t).numpy()
        return grad

    @property
    def forward(self) -> Any:
        """:meth:`probabilities` compiled (a ``tf.function``): images tensor -> probabilities tensor."""
        if getattr(self, "_forward", None) is None:
            import tensorflow as tf

            self._forward = tf.function(self.probabilities, reduce_retracing=True)
        return self._forward


def _logits_model(model: Any, layer: Optional[str]) -> Any:
    """A model giving the logits, when ``layer`` names the layer before a final softmax."""
    import keras

    if not layer:
        return None
    try:
        logits = model.get_layer(layer)
    except ValueError:
        return None
    if not isinstance(model.layers[-1], keras.layers.Softmax):
        return None
    return keras.Model(model.inputs, logits.output)
