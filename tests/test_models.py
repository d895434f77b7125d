import numpy as np
import pytest

from advpatch import models, training
from advpatch.models import ModelError, ModelInfo, build_model, check_buildable, load_model, save_model
from advpatch.params import ParameterError


@pytest.mark.parametrize(
    "architecture, shape",
    [("le_net", (28, 28, 1)), ("shallow_net", (28, 28, 1)), ("alex_net", (28, 28, 1)),
     ("resnet50", (32, 32, 3)), ("vgg16", (32, 32, 1))],
)
def test_each_architecture_outputs_class_probabilities(architecture, shape):
    model = build_model(architecture, shape, 7)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_shape_that_does_not_fit_fails_before_building():
    with pytest.raises(ModelError, match=r"'resnet50' needs images of at least 32x32, but the dataset has 28x28x1"):
        check_buildable("resnet50", (28, 28, 1))
    with pytest.raises(ParameterError, match="model_architecture must be one of"):
        build_model("resnet", (32, 32, 3), 10)


def test_short_training_lowers_the_loss():
    from conftest import digits, small_split

    x, y, _ = digits("train")
    x, y = small_split(x, y, 20)
    training.seed_everything(0)
    model = build_model("le_net", (28, 28, 1), 10)
    history = training.fit(model, x, y, epochs=3, batch_size=32, optimizer="adam", learning_rate=0.003, seed=0)
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert len(history["loss"]) == 3


def test_fractional_epochs_and_validation_split():
    from conftest import digits

    x, y, _ = digits("test")
    x, y = x[:100], y[:100]
    training.seed_everything(0)
    model = build_model("shallow_net", (28, 28, 1), 10)
    history = training.fit(model, x, y, epochs=1.5, batch_size=10, optimizer="sgd", learning_rate=0.01,
                           validation_split=0.2, seed=0)
    assert len(history["loss"]) == 2 and "val_loss" in history
    tr, val = training.split_validation(100, 0.2, 0)
    assert len(val) == 20 and not set(tr) & set(val)
    with pytest.raises(ParameterError, match="validation_split must be in"):
        training.split_validation(100, 1.0, 0)


def _train_weights(seed):
    from conftest import digits, small_split

    x, y, _ = digits("train")
    x, y = small_split(x, y, 10)
    training.seed_everything(seed)
    model = build_model("le_net", (28, 28, 1), 10)
    training.fit(model, x, y, epochs=2, batch_size=16, optimizer="rmsprop", learning_rate=0.001, seed=seed)
    return [w.copy() for w in model.get_weights()]


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = _train_weights(5), _train_weights(5), _train_weights(6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_model_artifact_round_trip(tmp_path):
    model = build_model("le_net", (28, 28, 1), 10)
    info = ModelInfo("le_net", (28, 28, 1), [str(i) for i in range(10)], provenance={"step": "test"})
    save_model(model, info, tmp_path / "m")
    loaded, info2 = load_model(tmp_path / "m")
    assert info2 == info
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    with pytest.raises(ModelError, match="model.json is missing"):
        models.read_model_info(tmp_path)
