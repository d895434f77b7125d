"""advpatch pipelines: compositions of the components, nothing else.

``PIPELINES`` maps each pipeline's CLI name to its function.
"""

from advpatch.pipelines.mnist_patch import mnist_patch

PIPELINES = {"mnist-patch": mnist_patch}

__all__ = ["PIPELINES", "mnist_patch"]
