"""advpatch pipelines: compositions of the components, nothing else.

``PIPELINES`` maps each pipeline's CLI name to its function.
"""

from advpatch.pipelines.mnist_experiment import mnist_experiment
from advpatch.pipelines.mnist_patch import mnist_patch

PIPELINES = {"mnist-experiment": mnist_experiment, "mnist-patch": mnist_patch}
"""CLI name -> pipeline. `advpatch demo` runs mnist-experiment."""

__all__ = ["PIPELINES", "mnist_experiment", "mnist_patch"]
