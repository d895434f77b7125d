import math

import pytest

from advpatch import params
from advpatch.params import ParameterError


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("model_architecture", "lenet", "model_architecture must be one of 'le_net', 'shallow_net', 'alex_net', 'resnet50', 'vgg16', got 'lenet'"),
        ("optimizer", "adamw", "optimizer must be one of 'rmsprop', 'adam', 'adagrad', 'sgd', got 'adamw'"),
        ("validation_split", 1.0, "validation_split must be in [0, 1), got 1.0"),
        ("validation_split", -0.1, "validation_split must be in [0, 1), got -0.1"),
        ("epochs", 0, "epochs must be a number > 0, got 0"),
        ("learning_rate", -1e-3, "learning_rate must be a number > 0, got -0.001"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("batch_size", 2.5, "batch_size must be an integer >= 1, got 2.5"),
        ("batch_size", True, "batch_size must be an integer >= 1, got True"),
        ("epochs", math.nan, "epochs must be a number > 0, got nan"),
        ("seed", -1, "seed must be an integer in [0, 2147483647], got -1"),
        ("split", "validation", "split must be one of 'train', 'test', 'all', got 'validation'"),
    ],
)
def test_bad_values_name_parameter_value_and_allowed(name, value, message):
    with pytest.raises(ParameterError) as err:
        params.check(**{name: value})
    assert str(err.value) == message


def test_good_values_pass():
    params.check(model_architecture="vgg16", optimizer="sgd", validation_split=0.0, epochs=0.5,
                 learning_rate=1e-4, batch_size=1, seed=0, split="all", image_size=0)


def test_unknown_parameter_is_a_programming_error():
    with pytest.raises(KeyError):
        params.check(no_such_parameter=1)
