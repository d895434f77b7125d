"""The work behind each component, callable without KFP: one module per step.

Every step is called with the paths of the artifacts it reads and writes and its parameters by
name (the parameter table, :mod:`advpatch.params`, says which, with their defaults)::

    from advpatch import steps
    steps.train(training_data="data/train", model="out/model", epochs=5, seed=1)

It validates every parameter before any heavy import or work, logs its start, end and duration,
writes its artifacts atomically, logs to MLflow (a nested run under its pipeline's run) and returns
a :class:`StepResult`. The KFP components in ``components/`` are thin shells over these.
"""

from advpatch.results import StepResult
from advpatch.steps.attack import deploy_patch, gen_patch
from advpatch.steps.certify import derandomized_smoothing
from advpatch.steps.cleanse import patch_cleanser
from advpatch.steps.data import load_dataset
from advpatch.steps.defend import gaussian_augmentation, jpeg_compression, spatial_smoothing
from advpatch.steps.infer import infer
from advpatch.steps.model import import_model, init_model
from advpatch.steps.report import close_run, gather, report
from advpatch.steps.train import train

STEPS = {f.step_name: f for f in (load_dataset, train, init_model, import_model, gen_patch, deploy_patch,
                                  spatial_smoothing, jpeg_compression, gaussian_augmentation, derandomized_smoothing,
                                  patch_cleanser, infer, report, gather, close_run)}
"""Step name -> the step (the same names as the components and :data:`advpatch.params.STEP_PARAMS`)."""

__all__ = ["STEPS", "StepResult", "close_run", "deploy_patch", "derandomized_smoothing", "gather", "gaussian_augmentation", "gen_patch",
           "import_model", "infer", "init_model", "jpeg_compression", "load_dataset", "patch_cleanser", "report", "spatial_smoothing",
           "train"]
