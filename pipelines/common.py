"""What every advpatch pipeline shares."""

from typing import Dict

from kfp import dsl
from kfp.dsl import pipeline_context


def tracking(experiment_name) -> Dict[str, object]:
    """Arguments that put a step's MLflow run under its pipeline run, named after its KFP task."""
    return {
        "experiment_name": experiment_name,
        "pipeline_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        "pipeline_run_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        "task_name": dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    }


def report_inputs(*tasks) -> Dict[str, object]:
    """The report component's ``summary_01``, ``summary_02``, ... arguments: each task's
    ``summary`` output, in table order."""
    from advpatch.components import report

    slots = [name for name in report.component_spec.inputs if name.startswith("summary_")]
    if len(tasks) > len(slots):
        raise ValueError(f"a report takes at most {len(slots)} steps, got {len(tasks)}")
    return {slot: task.outputs["summary"] for slot, task in zip(slots, tasks)}


def place_all(placement) -> None:
    """Apply a placement (``placement.apply(task, component_name)``, see
    :mod:`advpatch.app.placement`) to every task of the pipeline being built; call it last in a
    pipeline function. ``None`` places nothing (local runs)."""
    if placement is None:
        return
    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        placement.apply(task, task.component_spec.name.replace("-", "_"))
