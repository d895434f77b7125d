"""advpatch pipelines: compositions of the components, nothing else.

Each pipeline's parameters (names, types, defaults, descriptions) come from the parameter table,
:data:`advpatch.params.PIPELINE_PARAMS`; ``make generate`` writes them into the function signatures.
"""

from advpatch.pipelines import custom_model_patch as _custom
from advpatch.pipelines import fruits360_experiment as _fruits
from advpatch.pipelines import imagenet_patch as _imagenet
from advpatch.pipelines import mnist_defences as _defences
from advpatch.pipelines import mnist_experiment as _experiment
from advpatch.pipelines import mnist_patch as _patch
from advpatch.pipelines import mnist_sweep as _sweep

_MODULES = {"mnist-experiment": _experiment, "mnist-patch": _patch, "mnist-sweep": _sweep,
            "mnist-defences": _defences, "fruits360-experiment": _fruits, "imagenet-patch": _imagenet,
            "custom-model-patch": _custom}

mnist_experiment = _experiment.mnist_experiment
mnist_patch = _patch.mnist_patch
mnist_sweep = _sweep.mnist_sweep
mnist_defences = _defences.mnist_defences
fruits360_experiment = _fruits.fruits360_experiment
imagenet_patch = _imagenet.imagenet_patch
custom_model_patch = _custom.custom_model_patch

PIPELINES = {name: getattr(module, name.replace("-", "_")) for name, module in _MODULES.items()}
"""CLI name -> pipeline built with no placement. `advpatch demo` runs mnist-experiment."""

BUILDERS = {name: module.build for name, module in _MODULES.items()}
"""CLI name -> ``build(placement)``, for compiling with a placement."""


def build(name: str, placement=None, eval_shards: int = 1):
    """The pipeline ``name`` with ``placement``, its evaluation in ``eval_shards`` shards (a build
    option: KFP's loop over the shards is fixed when the pipeline is compiled); 1: as ``PIPELINES``."""
    import inspect

    from advpatch import params

    params.check(eval_shards=eval_shards)
    if eval_shards == 1:
        return BUILDERS[name](placement)
    if "eval_shards" not in inspect.signature(BUILDERS[name]).parameters:
        raise params.ParameterError(f"eval_shards: pipeline {name} has no sharded evaluation, got {eval_shards}")
    return BUILDERS[name](placement, eval_shards=eval_shards)

__all__ = ["BUILDERS", "PIPELINES", "build", "custom_model_patch", "fruits360_experiment", "imagenet_patch",
           "mnist_defences",
           "mnist_experiment", "mnist_patch", "mnist_sweep"]
