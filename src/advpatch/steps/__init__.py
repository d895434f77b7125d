"""The work behind each component, callable without KFP: one module per kind of step.

Every step is called with the paths of the artifacts it reads and writes and its parameters by
name (the parameter table, :mod:`advpatch.params`, says which, with their defaults)::

    from advpatch import steps
    steps.train(training_data="data/train", model="out/model", epochs=5, seed=1)

It validates every parameter before any heavy import or work, logs its start, end and duration,
writes its artifacts atomically, logs to MLflow (a nested run under its pipeline's run) and returns
a :class:`~advpatch.results.StepResult`. The KFP components in ``components/`` are thin shells over
these. :data:`STEPS` holds them all, by name: the step modules here register them as they are
imported (each preprocessing defence gets its own, see :mod:`.defend`).
"""

import importlib
import pkgutil

from advpatch.results import StepResult
from advpatch.steps._base import STEPS

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
globals().update(STEPS)  # steps.train, steps.infer, ...

__all__ = ["STEPS", "StepResult", *sorted(STEPS)]
