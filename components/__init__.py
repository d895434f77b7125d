"""advpatch's KFP components: thin, typed shells over :mod:`advpatch.steps`.

Each component lives in its own folder (``component.py`` + ``README.md``). Importing this module
imports KFP but never TensorFlow.
"""

from advpatch.components.deploy_patch.component import deploy_patch
from advpatch.components.gaussian_augmentation.component import gaussian_augmentation
from advpatch.components.gen_patch.component import gen_patch
from advpatch.components.infer.component import infer
from advpatch.components.jpeg_compression.component import jpeg_compression
from advpatch.components.load_dataset.component import load_dataset
from advpatch.components.report.component import report
from advpatch.components.spatial_smoothing.component import spatial_smoothing
from advpatch.components.train.component import train

__all__ = ["load_dataset", "train", "gen_patch", "deploy_patch", "spatial_smoothing", "jpeg_compression",
           "gaussian_augmentation", "infer", "report"]
