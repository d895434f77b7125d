"""report: one results table from every step of a pipeline."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from advpatch.settings import runtime_image

MAX_STEPS = 24
"""How many step summaries one report takes (KFP passes no variable-length artifact lists)."""


@dsl.component(base_image=runtime_image(), install_kfp_package=False)
def report(
    results: Output[Artifact],
    table: Output[Markdown],
    step_01: Input[Artifact] = None,
    step_02: Input[Artifact] = None,
    step_03: Input[Artifact] = None,
    step_04: Input[Artifact] = None,
    step_05: Input[Artifact] = None,
    step_06: Input[Artifact] = None,
    step_07: Input[Artifact] = None,
    step_08: Input[Artifact] = None,
    step_09: Input[Artifact] = None,
    step_10: Input[Artifact] = None,
    step_11: Input[Artifact] = None,
    step_12: Input[Artifact] = None,
    step_13: Input[Artifact] = None,
    step_14: Input[Artifact] = None,
    step_15: Input[Artifact] = None,
    step_16: Input[Artifact] = None,
    step_17: Input[Artifact] = None,
    step_18: Input[Artifact] = None,
    step_19: Input[Artifact] = None,
    step_20: Input[Artifact] = None,
    step_21: Input[Artifact] = None,
    step_22: Input[Artifact] = None,
    step_23: Input[Artifact] = None,
    step_24: Input[Artifact] = None,
    title: str = "advpatch results",
    experiment_name: str = "",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
    task_name: str = "",
):
    """Gather the steps' summaries into results.json and a Markdown table; close the MLflow
    pipeline run and attach both to it.

    Args:
        results: Output. results.json: every metric of every step (advpatch-results v1).
        table: Output. The comparison table (KFP's Markdown viewer shows it).
        step_01: The 'summary' output of a step; step_01 ... step_24 are reported in that order
            (unset slots are skipped). advpatch.pipelines.common.report_inputs fills them.
        title: Heading of the table.
        experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        pipeline_run_id: KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER): groups steps in MLflow.
        pipeline_run_name: KFP run name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        task_name: KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    from advpatch import steps
    from advpatch.tracking import RunContext

    slots = [step_01, step_02, step_03, step_04, step_05, step_06, step_07, step_08, step_09, step_10, step_11, step_12, step_13, step_14, step_15, step_16, step_17, step_18, step_19, step_20, step_21, step_22, step_23, step_24]
    steps.report([s.path for s in slots if s is not None], results.path, table.path, title=title,
                 ctx=RunContext(experiment_name, pipeline_run_id, pipeline_run_name, task_name))
