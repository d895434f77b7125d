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
    """The report component's step_01, step_02, ... arguments: each task's ``summary`` output,
    in table order."""
    from advpatch.components.report.component import MAX_STEPS

    if len(tasks) > MAX_STEPS:
        raise ValueError(f"a report takes at most {MAX_STEPS} steps, got {len(tasks)}")
    return {f"step_{i:02d}": task.outputs["summary"] for i, task in enumerate(tasks, start=1)}


def place_all(placement) -> None:
    """Apply a :class:`~advpatch.pipelines.placement.Placement` to every task of the pipeline being
    built (call it last in a pipeline function)."""
    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        placement.apply(task, task.component_spec.name.replace("-", "_"))
