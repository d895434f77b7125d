"""The parameter table and how values are judged: one rule and one message shape everywhere."""

import math
import re

import pytest

from advpatch import params
from advpatch.params import ParameterError


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("model_architecture", "lenet",
         "model_architecture must be one of 'le_net', 'shallow_net', 'conv_net', 'alex_net', 'resnet50', 'vgg16', "
         "got 'lenet'"),
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
        ("register_model", "yes", "register_model must be true or false, got 'yes'"),
        ("model_tag", "a b",
         "model_tag must be letters, digits, _ . - (not starting with . or -), or empty, got 'a b'"),
        ("model_uri", "mnist_le_net/1", "model_uri must be 'models:/NAME/VERSION' or 'runs:/RUN_ID/PATH', or empty, "
                                        "got 'mnist_le_net/1'"),
        ("output_tar_name", "../x.tar",
         "output_tar_name must be a plain file name ending in .tar, or empty, got '../x.tar'"),
        ("source", "",
         "source must be 'digits', a folder, an .npz file, s3://BUCKET/PREFIX or mlflow-run://RUN_ID/TAR_NAME, got ''"),
    ],
)
def test_bad_values_name_parameter_value_and_allowed(name, value, message):
    with pytest.raises(ParameterError) as err:
        params.check(**{name: value})
    assert str(err.value) == message


def test_good_values_pass():
    params.check(model_architecture="vgg16", optimizer="sgd", validation_split=0.0, epochs=0.5,
                 learning_rate=1e-4, batch_size=1, seed=0, split="all", image_size=0, model_tag="",
                 model_uri="models:/mnist_le_net/3", output_tar_name="adv_testing.tar")


def test_unknown_parameter_is_a_programming_error():
    with pytest.raises(KeyError):
        params.check(no_such_parameter=1)


def test_a_step_takes_only_its_parameters_and_gets_defaults_for_the_rest():
    values = params.validate_step("deploy_patch", {"patch_scale": 0.5, "seed": 3})
    assert values["patch_scale"] == 0.5 and values["seed"] == 3 and values["batch_size"] == 256
    assert [p.name for p in params.STEP_PARAMS["deploy_patch"]] == list(values)
    with pytest.raises(ParameterError, match=r"^epochs is not a parameter of deploy_patch; it takes batch_size, "):
        params.validate_step("deploy_patch", {"epochs": 1.0})
    assert isinstance(params.validate_step("train", {"epochs": 3})["epochs"], float)  # an int is a float's value


def test_rules_between_parameters_hold_wherever_both_are_given():
    message = "scale_min must be smaller than scale_max, got scale_min=0.5 and scale_max=0.5"
    with pytest.raises(ParameterError, match=message):
        params.validate_step("gen_patch", {"scale_min": 0.5, "scale_max": 0.5})
    with pytest.raises(ParameterError, match=message):
        params.validate_pipeline("mnist-patch", {"scale_min": 0.5})  # the pipeline's scale_max is 0.5
    with pytest.raises(ParameterError, match="needs gaussian_augmentation_apply_fit=True"):
        params.validate_step("gaussian_augmentation", {"gaussian_augmentation_perform_data_augmentation": True})


def test_pipeline_parameters_that_feed_a_step_parameter_take_its_rule():
    with pytest.raises(ParameterError, match=r"^patch_learning_rate must be a number > 0, got -1.0$"):
        params.validate_pipeline("mnist-experiment", {"patch_learning_rate": -1.0})
    for name, table in params.PIPELINE_PARAMS.items():
        for p in table:
            if p.of:
                step, target = p.of.split(".")
                (fed,) = [q for q in params.STEP_PARAMS[step] if q.name == target]
                # a list parameter (a ParallelFor's items) feeds its items, one per iteration
                assert (float if p.type is list else p.type, p.rule) == (fed.type, fed.rule), f"{name}.{p.name}"
            else:
                assert p.name in params.PARAMS, f"{name}.{p.name} is in no step"


def test_every_default_passes_its_own_rule_and_every_parameter_is_described():
    for where, table in [*params.STEP_PARAMS.items(), *params.PIPELINE_PARAMS.items(), ("tracking", params.TRACKING)]:
        for p in table:
            assert p.check(p.default) == p.default, f"{where}.{p.name}"
            assert p.doc and p.doc.endswith((".", ")")) and "\n" not in p.doc, f"{where}.{p.name}: {p.doc!r}"
            assert p.type in (int, float, str, bool, list)
    for name in params.PIPELINE_PARAMS:
        params.validate_pipeline(name, {})


@pytest.mark.parametrize("kind, raw, value", [(int, "3", 3), (float, "0.5", 0.5), (bool, "true", True),
                                              (bool, "False", False), (str, "x=y", "x=y")])
def test_command_line_text_is_typed_by_the_table(kind, raw, value):
    assert params.parse_text("p", kind, raw) == value


def test_a_list_parameter_checks_each_item_by_the_rule_it_feeds():
    assert params.parse_text("patch_scales", list, "0.25, 0.5") == [0.25, 0.5]
    assert params.validate_pipeline("mnist-sweep", {"patch_scales": [0.3]})["patch_scales"] == [0.3]
    allowed = re.escape("must be a non-empty list of distinct numbers, each in [0, 1]")
    with pytest.raises(ParameterError, match=rf"^patch_scales {allowed}, got \[0.3, 1.5\] \(1.5 is not\)$"):
        params.validate_pipeline("mnist-sweep", {"patch_scales": [0.3, 1.5]})
    with pytest.raises(ParameterError, match=rf"^patch_scales {allowed}, got \[\]$"):
        params.validate_pipeline("mnist-sweep", {"patch_scales": []})
    with pytest.raises(ParameterError, match=r"a value repeats"):
        params.validate_pipeline("mnist-sweep", {"patch_scales": [0.3, 0.3]})
    with pytest.raises(ParameterError, match=r"patch_scales"):
        params.parse_text("patch_scales", list, "0.2,big")


@pytest.mark.parametrize("kind, raw, message", [(int, "2.5", "p must be an integer, got '2.5'"),
                                                (float, "many", "p must be a number, got 'many'"),
                                                (bool, "1", "p must be true or false, got '1'")])
def test_bad_command_line_text(kind, raw, message):
    with pytest.raises(ParameterError, match=f"^{message}$"):
        params.parse_text("p", kind, raw)
