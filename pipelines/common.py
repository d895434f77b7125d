"""What every advpatch pipeline shares."""

from typing import Dict

from kfp import dsl
from kfp.dsl import pipeline_context

from advpatch import settings


def tracking(experiment_name) -> Dict[str, object]:
    """Arguments that name a step's MLflow run after its KFP task, in ``experiment_name``. Both are
    the same in every run of the pipeline, so they never keep KFP's cache from hitting; the run
    itself comes from the task's environment (see :func:`place_all`)."""
    return {"experiment_name": experiment_name, "task_name": dsl.PIPELINE_TASK_NAME_PLACEHOLDER}


def load_splits(data_dir, image_size, seed, track):
    """The training and the test split of ``data_dir`` as Dataset artifacts (grayscale, at
    ``image_size``): the two ``load_dataset`` tasks every MNIST pipeline starts with."""
    from advpatch.components import load_dataset

    data = dict(source=data_dir, image_size=image_size, color_mode="grayscale", seed=seed)
    return (load_dataset(split="train", **data, **track).set_display_name("load training data"),
            load_dataset(split="test", **data, **track).set_display_name("load test data"))


def report_inputs(*tasks) -> Dict[str, object]:
    """The report component's ``summary_01``, ``summary_02``, ... arguments: each task's
    ``summary`` output (a gather task's ``bundle``), in table order."""
    from advpatch.components import report

    slots = [name for name in report.component_spec.inputs if name.startswith("summary_")]
    if len(tasks) > len(slots):
        raise ValueError(f"a report takes at most {len(slots)} steps, got {len(tasks)}")
    return {slot: task.outputs["bundle" if "bundle" in task.outputs else "summary"] for slot, task in zip(slots, tasks)}


RUN_IDENTITY = {
    settings.ENV_PIPELINE_RUN_ID: "metadata.labels['pipeline/runid']",
    settings.ENV_PIPELINE_RUN_NAME: "metadata.labels['workflows.argoproj.io/workflow']",
}
"""Where a task on a cluster finds its pipeline run: the labels KFP (``pipeline/runid``, the run's
id, on every pod of the run) and Argo (the workflow's name) put on its pod, as environment
variables. The local runner ignores them; ``advpatch run`` sets the same variables itself."""

PER_RUN = ("report", "close_run")
"""Components that exist for what they do to this run's MLflow record: never served from KFP's cache."""


def place_all(placement) -> None:
    """Finish every task of the pipeline being built (call it last in a pipeline function): map its
    run identity into its environment (:data:`RUN_IDENTITY`), keep :data:`PER_RUN` components out of
    the cache, and apply a placement (``placement.apply(task, component_name)``, see
    :mod:`advpatch.app.placement`); ``None`` places nothing else."""
    from kfp import kubernetes

    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        for env, field in RUN_IDENTITY.items():
            kubernetes.use_field_path_as_env(task, env_name=env, field_path=field)
        component = task.component_spec.name.replace("-", "_")
        if component in PER_RUN:
            task.set_caching_options(False)
        if placement is not None:
            placement.apply(task, component)
