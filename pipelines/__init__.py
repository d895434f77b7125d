"""advpatch pipelines: compositions of the components, nothing else.

Each pipeline's parameters (names, types, defaults, descriptions) come from the parameter table,
:data:`advpatch.params.PIPELINE_PARAMS`; ``make generate`` writes them into the function signatures.
"""

from advpatch.pipelines import mnist_experiment as _experiment
from advpatch.pipelines import mnist_patch as _patch
from advpatch.pipelines import mnist_sweep as _sweep

mnist_experiment = _experiment.mnist_experiment
mnist_patch = _patch.mnist_patch
mnist_sweep = _sweep.mnist_sweep

PIPELINES = {"mnist-experiment": mnist_experiment, "mnist-patch": mnist_patch, "mnist-sweep": mnist_sweep}
"""CLI name -> pipeline built with no placement. `advpatch demo` runs mnist-experiment."""

BUILDERS = {"mnist-experiment": _experiment.build, "mnist-patch": _patch.build, "mnist-sweep": _sweep.build}
"""CLI name -> ``build(placement)``, for compiling with a placement."""

__all__ = ["BUILDERS", "PIPELINES", "mnist_experiment", "mnist_patch", "mnist_sweep"]
