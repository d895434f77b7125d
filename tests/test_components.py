"""Components are thin shells over advpatch.steps: same parameters, same defaults, documented."""

import inspect

import pytest

from advpatch import components, steps

# component -> the library function it calls
SHELLS = {
    "load_dataset": steps.load_dataset,
    "train": steps.train,
    "gen_patch": steps.gen_patch,
    "deploy_patch": steps.deploy_patch,
    "infer": steps.infer,
    "spatial_smoothing": steps.defend,
    "jpeg_compression": steps.defend,
    "gaussian_augmentation": steps.defend,
}
TRACKING = {"experiment_name", "pipeline_run_id", "pipeline_run_name", "task_name"}


def _python_func(component):
    return component.python_func


@pytest.mark.parametrize("name", sorted(SHELLS))
def test_component_defaults_match_the_library(name):
    """One definition of each default: a component's default equals the library's."""
    func = _python_func(getattr(components, name))
    library = inspect.signature(inspect.unwrap(SHELLS[name])).parameters
    checked = 0
    for pname, param in inspect.signature(func).parameters.items():
        if (param.default is inspect.Parameter.empty or pname in TRACKING or pname not in library
                or library[pname].default is inspect.Parameter.empty):
            continue
        assert param.default == library[pname].default, f"{name}.{pname}: {param.default!r} != {library[pname].default!r}"
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", components.__all__)
def test_every_argument_is_documented(name):
    func = _python_func(getattr(components, name))
    doc = inspect.getdoc(func)
    for pname in inspect.signature(func).parameters:
        if pname.startswith("step_") and pname != "step_01":
            continue  # the report's numbered slots are documented once
        assert f"{pname}:" in doc, f"{name}: argument {pname} is not documented"


def test_defence_defaults_match_the_defence_wrappers():
    from advpatch import defences

    sig = lambda f: inspect.signature(f).parameters  # noqa: E731
    ss = sig(_python_func(components.spatial_smoothing))
    assert ss["spatial_smoothing_apply_fit"].default == sig(defences.spatial_smoothing)["apply_fit"].default
    assert ss["spatial_smoothing_apply_predict"].default == sig(defences.spatial_smoothing)["apply_predict"].default
    jc = sig(_python_func(components.jpeg_compression))
    assert jc["jpeg_compression_channels_first"].default == sig(defences.jpeg_compression)["channels_first"].default
