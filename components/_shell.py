"""What every component body does: call its library step with its artifacts' paths and its
parameters, then copy the result into KFP's outputs.

A component is a typed signature (generated from ``metadata.yaml`` and the parameter table) and
the one line ``run_step("<name>", locals())``: the step's artifacts go in as paths (an optional
input that is not connected as ``""``; numbered slots ``summary_01``, ``summary_02``... as one list
``summaries``; an exit task's ``dsl.PipelineTaskFinalStatus`` as its ``state``), its parameters
by name, and the tracking parameters, with the pipeline run from the task's environment, as the
step's :class:`~advpatch.tracking.RunContext`. The result's metrics go to the ``metrics`` output (KFP's
metrics viewer), its evaluations' confusion matrices to ``confusion`` (and, for a second evaluation
of patched images, ``confusion_patched``: KFP's confusion-matrix viewer), the whole
result as JSON to ``summary`` (for the report step) and its output metadata onto the output
artifacts.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import sys
from typing import Any, Dict, List, Mapping

from advpatch.components._warm import ENV_WARM_SOCKET, run_in_warm_child

KFP_OUTPUTS = ("metrics", "confusion", "confusion_patched", "summary")
"""Outputs the shell fills from the step's result; every other artifact is the step's to read or write."""

_NUMBERED = re.compile(r"(?P<base>[a-z_]+)_(?P<index>\d\d)")


def run_step(name: str, args: Mapping[str, Any]):
    """Run the library step ``name`` with a component's arguments (its ``locals()``)."""
    from advpatch import params
    from advpatch.errors import AdvpatchError
    from advpatch.steps import STEPS
    from advpatch.tracking import RunContext

    args = {k: v for k, v in args.items() if k != "run_step"}  # the body's own import of this function
    tracking = {p.name: args[p.name] for p in params.TRACKING}
    values = {p.name: args[p.name] for p in params.STEP_PARAMS[name]}
    paths: Dict[str, Any] = {}
    lists: Dict[str, List[str]] = {}
    for key in sorted(set(args) - set(tracking) - set(values) - set(KFP_OUTPUTS)):
        artifact = args[key]
        numbered = _NUMBERED.fullmatch(key)
        if hasattr(artifact, "state") and hasattr(artifact, "pipeline_task_name"):  # a PipelineTaskFinalStatus
            paths["state"] = artifact.state
        elif isinstance(artifact, list):  # a dsl.Collected list of artifacts
            paths[key] = [a.path for a in artifact]
        elif numbered:
            slots = lists.setdefault(_plural(numbered["base"]), [])
            if artifact is not None:
                slots.append(artifact.path)
        else:
            paths[key] = artifact.path if artifact is not None else ""
    ctx = RunContext.current(**tracking)
    try:
        result = None
        if os.environ.get(ENV_WARM_SOCKET):  # advpatch run: a process with the imports done forks for it
            result = run_in_warm_child(name, {**paths, **lists, **values}, ctx)
        if result is None:
            result = STEPS[name](**paths, **lists, **values, ctx=ctx)
    except AdvpatchError as e:
        if os.environ.get("_KFP_RUNTIME") != "true":  # a direct call: the caller handles it
            raise
        fail_task(name, e)
    to_kfp(result, args)
    if os.environ.get("_KFP_RUNTIME") == "true" and os.environ.get(ENV_WARM_SOCKET):  # a local run's task
        atexit.register(_exit_without_teardown)
    return result


def fail_task(name: str, error: Exception) -> None:
    """End a task that failed on bad input: the traceback stays in the task's log, then one line
    says what was wrong (the last thing in the log, the line KFP's UI and ``advpatch run`` show), and
    the task exits non-zero without a second traceback."""
    import traceback

    from advpatch.errors import ERROR_PREFIX

    traceback.print_exception(type(error), error, error.__traceback__)
    sys.stdout.flush()
    print(f"{ERROR_PREFIX}{name}: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _exit_without_teardown() -> None:
    """End a local run's task once KFP's executor has written its outputs: tearing down an interpreter
    that has TensorFlow loaded takes 1-2 s per task, for nothing (on a cluster the process ends as
    usual: there a second saves nothing, and a normal exit flushes everything). Registered last, this runs before
    the other exit handlers; it keeps the exit status (1 after an uncaught exception)."""
    import logging

    code = 1 if getattr(sys, "last_value", None) is not None else 0
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _plural(word: str) -> str:
    return word[:-1] + "ies" if word.endswith("y") else word + "s"


def to_kfp(result, artifacts: Mapping[str, Any]) -> None:
    """Copy a step's result into the KFP outputs a component has (see :data:`KFP_OUTPUTS`)."""
    from advpatch.io.files import write_text

    if artifacts.get("metrics") is not None:
        for key, value in result.metrics.items():
            if value is not None and math.isfinite(value):
                artifacts["metrics"].log_metric(key, float(value))
    for i, evaluation in enumerate(result.evaluations):  # the first in 'confusion', a second in 'confusion_patched'
        output = "confusion" if i == 0 else f"confusion_{evaluation.condition}"
        if artifacts.get(output) is not None and evaluation.matrix:
            artifacts[output].log_confusion_matrix(evaluation.categories, evaluation.matrix)
    if artifacts.get("summary") is not None:
        write_text(artifacts["summary"].path, result.to_json())
    for output, metadata in result.outputs.items():
        if artifacts.get(output) is not None:
            artifacts[output].metadata.update(metadata)
