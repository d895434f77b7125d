"""The classifier layer: a model with transforms in front, and what an attack gets back through them."""

import numpy as np
import pytest

from advpatch.defences.preprocessing import GaussianNoise, JpegCompression, SpatialSmoothing
from advpatch.models import ModelInfo, build_model
from advpatch.models.classifier import Classifier, Transform


@pytest.fixture(scope="module")
def lenet():
    import keras

    keras.utils.set_random_seed(0)
    return build_model("le_net", (28, 28, 1), 10), ModelInfo("le_net", (28, 28, 1), [str(i) for i in range(10)])


def _x(n=6, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


def _reference_gradient(model, x, y):
    """d(cross-entropy of the logits)/d(input) of the bare model, by TensorFlow."""
    import keras
    import tensorflow as tf

    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(y, logits(x), from_logits=True))
    return tape.gradient(loss, x).numpy()


def test_without_transforms_the_classifier_is_the_model(lenet):
    model, info = lenet
    clf = Classifier(model, info)
    x, y = _x(), np.arange(6)
    np.testing.assert_allclose(clf.predict(x), np.asarray(model(x, training=False)), rtol=1e-6, atol=1e-7)
    assert clf.from_logits
    np.testing.assert_allclose(clf.gradient(x, y), _reference_gradient(model, x, y), rtol=1e-5, atol=1e-7)


class Brighten(Transform):
    """A differentiable transform: 0.5 * x + 0.25."""

    name, gradient = "brighten", "exact"

    def numpy(self, x):
        return 0.5 * x + 0.25

    def graph(self, x):
        return 0.5 * x + 0.25


def test_a_differentiable_transform_gets_its_exact_gradient(lenet):
    model, info = lenet
    clf = Classifier(model, info, [Brighten()])
    x, y = _x(), np.arange(6)
    np.testing.assert_allclose(clf.predict(x), np.asarray(model(0.5 * x + 0.25, training=False)), rtol=1e-6)
    # chain rule: the model's gradient at the transformed input, times d(transform)/dx = 0.5
    np.testing.assert_allclose(clf.gradient(x, y), 0.5 * _reference_gradient(model, 0.5 * x + 0.25, y),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("transform", [JpegCompression(30), SpatialSmoothing(3)], ids=["jpeg", "median"])
def test_a_non_differentiable_transform_passes_the_gradient_straight_through(lenet, transform):
    model, info = lenet
    clf = Classifier(model, info, [transform])
    x, y = _x(), np.arange(6)
    seen = transform.numpy(x)  # what the model sees: the defence's own (ART's) forward pass
    assert np.abs(seen - x).mean() > 0.01
    np.testing.assert_allclose(clf.predict(x), np.asarray(model(seen, training=False)), rtol=1e-5, atol=1e-6)
    # BPDA: the backward pass is the identity, so the gradient is the model's at the defended input
    np.testing.assert_allclose(clf.gradient(x, y), _reference_gradient(model, seen, y), rtol=1e-5, atol=1e-7)


def test_chained_transforms_compose_in_order(lenet):
    model, info = lenet
    jpeg = JpegCompression(40)
    clf = Classifier(model, info).with_transforms(Brighten(), jpeg)
    x, y = _x(), np.arange(6)
    seen = jpeg.numpy(0.5 * x + 0.25)
    np.testing.assert_allclose(clf.predict(x), np.asarray(model(seen, training=False)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.gradient(x, y), 0.5 * _reference_gradient(model, seen, y), rtol=1e-5, atol=1e-7)


def test_a_random_transform_draws_anew_each_call_and_its_gradient_is_that_draws(lenet):
    model, info = lenet
    noise = GaussianNoise(0.1, seed=3)
    clf = Classifier(model, info, [noise])
    x = _x(2)
    a, b = clf.predict(x), clf.predict(x)
    assert not np.allclose(a, b)  # a fresh draw per call: an attack averages its gradient over draws
    again = Classifier(model, info, [GaussianNoise(0.1, seed=3)])
    np.testing.assert_array_equal(again.predict(x), a)  # same seed, same draws
    assert noise.gradient == "expectation" and JpegCompression(50).gradient == "straight_through"


def test_a_model_without_logits_is_attacked_on_its_probabilities(lenet):
    model, info = lenet
    clf = Classifier(model, ModelInfo(info.architecture, info.input_shape, info.class_names, logits_layer=None))
    assert not clf.from_logits
    x = _x(2)
    np.testing.assert_allclose(np.asarray(clf.scores(x)), np.asarray(model(x, training=False)), rtol=1e-6)
