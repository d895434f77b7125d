"""MLflow tracking: one parent run per pipeline run, one nested run per step, the model registry.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; without it, a local store under
``outputs/mlflow/`` (SQLite for runs and the registry, a folder for artifacts).

Two ways a step finds its place:

* **KFP's own MLflow integration** (KFP 2.17, with ``injectUserEnvVars``): KFP makes a parent run
  per pipeline run and a nested run per task, and hands the task its run as ``MLFLOW_RUN_ID``. The
  step logs into that run: it creates no parent, re-parents nothing, logs none of the task's input
  parameters (KFP logs them), and leaves the runs' status to KFP.
* **Otherwise** (local runs, clusters without the integration): steps of one pipeline run share a
  parent run found by the tag ``advpatch.pipeline_run_id``. The first step to arrive creates it; if
  several race, the oldest wins, the others' step runs move under it and the others are deleted
  (:func:`_settle_parents`). The pipeline's exit task marks it FINISHED or FAILED
  (:func:`close_pipeline_run`), so a failed pipeline does not leave it RUNNING.

A retried task's run replaces its killed attempt's; a server that is down, failing or silent fails
a step within 30 s with one :class:`TrackingError` (both: :mod:`advpatch.tracking.faults`).

A task reads its pipeline run from its environment (:meth:`RunContext.current`), not a task input.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple

from advpatch import __version__, settings
from advpatch.errors import TrackingError
from advpatch.tracking.faults import (
    attempt_key,
    bound_requests,
    reported,
    retire_earlier_attempts,
    through_dataset_race,
    wait_if_local_server,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

TAG_PIPELINE_RUN_ID = "advpatch.pipeline_run_id"
TAG_KIND = "advpatch.kind"
TAG_STEP = "advpatch.step"
TAG_TASK = "kfp.task_name"
TAG_KFP_RUN = "kfp.run_name"
TAG_PARENT = "mlflow.parentRunId"
MODEL_METADATA_KEY = "advpatch"
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


@dataclass(frozen=True)
class RunContext:
    """Where a step's MLflow run belongs: the experiment and the KFP run and task it is part of."""

    experiment_name: str = ""
    pipeline_run_id: str = ""
    pipeline_run_name: str = ""
    task_name: str = ""

    @property
    def experiment(self) -> str:
        return settings.experiment_name(self.experiment_name)

    @classmethod
    def current(cls, experiment_name: str = "", task_name: str = "") -> "RunContext":
        """The context a running task finds in its environment (see :mod:`advpatch.settings`)."""
        return cls(experiment_name, os.environ.get(settings.ENV_PIPELINE_RUN_ID, ""),
                   os.environ.get(settings.ENV_PIPELINE_RUN_NAME, ""), task_name)


def kfp_mlflow_run() -> Optional[str]:
    """The nested run KFP's MLflow integration made for this task, when it hands one over."""
    return os.environ.get(settings.ENV_MLFLOW_RUN_ID) or None


KFP_MOUNTS = {"/s3/": "s3://", "/minio/": "s3://", "/gcs/": "gs://"}
"""Where KFP's launcher puts a task's artifacts (``/<scheme>/<bucket>/<key>``) and the object
store URI each stands for (MinIO and SeaweedFS speak S3)."""


def artifact_uri(path: os.PathLike[str] | str) -> str:
    """The URI of the artifact at a task's local ``path``: its object-store URI on a cluster, a
    ``file://`` URI locally."""
    text = str(path)
    for prefix, scheme in KFP_MOUNTS.items():
        if text.startswith(prefix):
            return scheme + text[len(prefix):]
    return Path(text).resolve().as_uri()


def tracking_uri() -> str:
    missing = [v for v in (settings.ENV_MLFLOW_RUN_ID, settings.ENV_TRACKING_URI) if not os.environ.get(v)]
    if missing and os.environ.get(settings.ENV_KFP_MLFLOW) == "true":  # else a file in the pod would lose it all
        raise TrackingError("this pipeline was compiled with --kfp-mlflow, but KFP gave the task no "
                            f"{' or '.join(missing)}: "
                            "KFP's MLflow plugin is off, failed at run creation (see its API server's log) or lacks "
                            "injectUserEnvVars; compile without --kfp-mlflow to use advpatch's own MLflow server")
    return os.environ.get(settings.ENV_TRACKING_URI) or settings.local_tracking_uri()


def configure() -> str:
    """Point MLflow at :func:`tracking_uri` (creating the local store if that is where it points),
    its HTTP requests bounded (:func:`advpatch.tracking.faults.bound_requests`)."""
    settings.no_telemetry()
    bound_requests()
    import mlflow

    uri = tracking_uri()
    wait_if_local_server(uri)  # advpatch run starts one beside the pipeline: it may still be starting
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def check_server() -> None:
    """Fail now, with a :class:`TrackingError`, when the tracking server cannot serve (unreachable,
    failing, silent, refusing the credentials): a step calls this before its work, so that it
    neither wastes the work nor leaves outputs of a failed task. A local store: nothing to check."""
    if tracking_uri().startswith(("http://", "https://")):
        configure()
        import mlflow

        with reported():
            mlflow.MlflowClient().search_experiments(max_results=1)


def _local_artifact_root() -> Optional[str]:
    """Where a new experiment keeps its artifacts when the store is a local SQLite file: an
    ``artifacts`` folder beside the database (MLflow's own default is ``./mlruns`` under whatever
    directory the step happens to run in). ``None`` (the server decides) for any other store."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    root = Path(uri[len("sqlite:///"):]).parent / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve().as_uri()


def _experiment_id(name: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = _local_artifact_root()
    try:
        # MLflow's UI opens an experiment of this kind on its training runs (not the GenAI overview)
        return mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})
    except MlflowException:  # created meanwhile by a sibling step (else the error it was)
        if (found := mlflow.get_experiment_by_name(name)) is None:
            raise
        return found.experiment_id


def _parents(client: MlflowClient, experiment_id: str, ctx: RunContext, everyone: bool = False) -> List[Run]:
    """The pipeline run's parent runs, oldest first (start time, then run id: one order for all)."""
    from mlflow.entities import ViewType

    query = f"tags.`{TAG_PIPELINE_RUN_ID}` = '{ctx.pipeline_run_id}' and tags.`{TAG_KIND}` = 'pipeline'"
    runs = client.search_runs([experiment_id], query, run_view_type=ViewType.ALL if everyone else ViewType.ACTIVE_ONLY,
                              max_results=1000)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def _parent_run_id(client: MlflowClient, experiment_id: str, ctx: RunContext) -> str:
    found = _parents(client, experiment_id, ctx)
    if found:
        return str(found[0].info.run_id)
    client.create_run(experiment_id, run_name=ctx.pipeline_run_name or f"pipeline-{ctx.pipeline_run_id}",
                      tags={TAG_PIPELINE_RUN_ID: ctx.pipeline_run_id, TAG_KIND: "pipeline",
                            TAG_KFP_RUN: ctx.pipeline_run_name})
    return _settle_parents(client, experiment_id, ctx)


def _settle_parents(client: MlflowClient, experiment_id: str, ctx: RunContext) -> str:
    """One parent for the pipeline run: the oldest of all ever created wins; the others' step runs
    move under it and the others are deleted.

    Steps racing to create the parent may each see only their own (a run's start time is the
    client's clock, its row appears when the server commits), so a step can briefly log under a
    parent that later loses. The oldest is never deleted (it is the oldest in every view that holds
    it), and the report and the exit task settle again once every step has run, so a finished
    pipeline has exactly one parent holding every step run."""
    everyone = _parents(client, experiment_id, ctx, everyone=True)
    # the oldest active one: a parent a person deleted (then re-ran the same KFP run) stays deleted
    winner = str(next(r.info.run_id for r in everyone if r.info.lifecycle_stage == "active"))
    for loser in (r for r in everyone if r.info.run_id != winner):
        moved = client.search_runs([experiment_id], f"tags.`{TAG_PARENT}` = '{loser.info.run_id}'", max_results=1000)
        for child in moved:
            client.set_tag(child.info.run_id, TAG_PARENT, winner)
        if loser.info.lifecycle_stage == "active":
            client.delete_run(loser.info.run_id)
    return winner


class StepRun:
    """The MLflow run of one step; log through it."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_params(self, values: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params({k: v for k, v in values.items()})

    def log_metrics(self, values: Mapping[str, float], step: Optional[int] = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        mlflow.log_metrics(clean, step=step)

    def log_history(self, history: Mapping[str, Any]) -> None:
        for name, values in history.items():
            for epoch, value in enumerate(values):
                self.log_metrics({name: value}, step=epoch)

    def log_dict(self, data: Dict[str, Any], artifact_file: str) -> None:
        import mlflow

        mlflow.log_dict(data, artifact_file)

    def log_artifacts(self, local_dir: str, artifact_path: str) -> None:
        import mlflow

        mlflow.log_artifacts(local_dir, artifact_path)

    def log_input(self, path: str, context: str, name: str, digest: str) -> None:
        """Log the artifact at ``path`` (a Dataset: its ``name`` and content ``digest``) as an input of
        this run (MLflow's Dataset column), ``context`` (``training``, ``evaluation``,
        ``generation``...) as the input's tag."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(artifact_uri(path))
            # MLflow's types call MetaDataset abstract (its profile property); the class is used as is
            dataset = MetaDataset(source, name=name, digest=digest)  # type: ignore[abstract]
            through_dataset_race(lambda: mlflow.log_input(dataset, context=context))

    def log_dataset(self, path: str, tar_name: str, dataset_name: str) -> str:
        """Log a dataset folder as ``tar_name`` holding ``dataset_name/`` (the seed's layout, e.g.
        ``adv_testing.tar`` with ``adversarial_patched_data/``); returns the
        ``mlflow-run://RUN_ID/TAR_NAME#FOLDER`` source that brings it back (see
        :mod:`advpatch.data.sources`)."""
        import mlflow

        from advpatch.io.files import create_tar

        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(create_tar(path, Path(tmp) / tar_name, dataset_name)))
        return f"mlflow-run://{self.run_id}/{tar_name}#{dataset_name}"

    def log_model(self, model: Any, metadata: Dict[str, Any], registered_name: str = "") -> Tuple[str, str]:
        """Log a Keras model (and register it when ``registered_name`` is given). Returns
        ``(model_uri, registered_version)``; the version is ``""`` when not registered."""
        import keras
        import mlflow
        import tensorflow as tf

        # Explicit requirements: MLflow's inference of them reloads the model in a subprocess.
        requirements = [f"advpatch=={__version__}", f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
        info = mlflow.keras.log_model(model, name="model", registered_model_name=registered_name or None,
                                      pip_requirements=requirements, metadata={MODEL_METADATA_KEY: metadata})
        version = str(info.registered_model_version or "")
        uri = f"models:/{registered_name}/{version}" if version else info.model_uri
        return uri, version


@contextlib.contextmanager
def step_run(step: str, ctx: RunContext, params: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None,
             *, name: str = "", part: bool = False, artifacts: Optional[Mapping[str, Any]] = None) -> Iterator[StepRun]:
    """Open the MLflow run of one step, called ``name`` (default: the task's or step's name): KFP's
    nested run for the task when KFP's MLflow integration hands one over, else a run nested under
    the pipeline's parent run (when there is one). With ``part`` (one of several results of a task),
    under KFP's integration a run nested under KFP's run for the task.

    ``params`` (the task's input parameters) and ``extra`` (more settings) are logged on entry;
    under KFP's integration only ``extra``, as KFP logs the inputs itself. The run ends FINISHED,
    or FAILED if the body raises (KFP then sets its own runs' final status).
    """
    with reported():
        configure()
        import mlflow
        from mlflow.entities import RunTag

        tags = {TAG_STEP: step, TAG_KIND: "step", "advpatch.version": __version__}
        if ctx.task_name:
            tags[TAG_TASK] = ctx.task_name
        kfp_run = kfp_mlflow_run()
        run_name = name or ctx.task_name or step
        if kfp_run and not part:  # KFP's own run for the task: KFP logs the task's inputs (row, ...) there
            run_args: Dict[str, Any] = {"run_id": kfp_run}
            logged = {k: v for k, v in (extra or {}).items() if k not in params}
        elif kfp_run:
            experiment_id = mlflow.MlflowClient().get_run(kfp_run).info.experiment_id
            tags[TAG_PARENT] = kfp_run
            run_args = {"experiment_id": experiment_id, "run_name": run_name}
            logged = dict(extra or {})
        else:
            experiment_id = _experiment_id(ctx.experiment)
            run_args = {"experiment_id": experiment_id, "run_name": run_name}
            logged = {**params, **(extra or {})}
            if ctx.pipeline_run_id:
                tags[TAG_PIPELINE_RUN_ID] = ctx.pipeline_run_id
                tags[TAG_KFP_RUN] = ctx.pipeline_run_name
                tags[TAG_PARENT] = _parent_run_id(mlflow.MlflowClient(), experiment_id, ctx)
                key = attempt_key(ctx.pipeline_run_id, ctx.task_name, step, run_name, {**logged, "": artifacts})
                run_args["tags"] = retire_earlier_attempts(mlflow.MlflowClient(), experiment_id, key)  # replaces
        started = time.monotonic()
        try:
            if kfp_run and part:  # else start_run would resume KFP's run, named by MLFLOW_RUN_ID
                os.environ.pop(settings.ENV_MLFLOW_RUN_ID, None)
            with mlflow.start_run(**run_args) as run:
                mlflow.MlflowClient().log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
                step_run_ = StepRun(run.info.run_id)
                step_run_.log_params(logged)
                log.info("MLflow run %s (%s)%s", run.info.run_id, run_name, " (KFP's)" if kfp_run and not part else "")
                yield step_run_
                step_run_.log_metrics({"duration_s": time.monotonic() - started})
        finally:
            if kfp_run:  # mlflow.end_run() removes MLFLOW_RUN_ID from the environment: the task's, put back
                os.environ[settings.ENV_MLFLOW_RUN_ID] = kfp_run


def _pipeline_parent(client: MlflowClient, ctx: RunContext) -> Optional[str]:
    """The pipeline's parent run: KFP's (the parent of this task's run) or advpatch's own."""
    kfp_run = kfp_mlflow_run()
    if kfp_run:
        return client.get_run(kfp_run).data.tags.get(TAG_PARENT)
    if not ctx.pipeline_run_id:
        return None
    experiment_id = _experiment_id(ctx.experiment)
    _parent_run_id(client, experiment_id, ctx)
    return _settle_parents(client, experiment_id, ctx)


@reported()
def finish_pipeline_run(ctx: RunContext, *, dicts: Optional[Mapping[str, Any]] = None,
                        texts: Optional[Mapping[str, str]] = None,
                        metrics: Optional[Mapping[str, float]] = None) -> Optional[str]:
    """Attach ``dicts`` (as JSON), ``texts`` and ``metrics`` to the pipeline's parent run (the
    report step calls this) and, unless KFP's integration owns the run, mark it FINISHED. Returns
    the parent run's id, or ``None`` outside a pipeline."""
    configure()
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    parent = _pipeline_parent(client, ctx)
    if parent is None:
        return None
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])
    for name, data in (dicts or {}).items():
        client.log_dict(parent, data, name)
    for name, text in (texts or {}).items():
        client.log_text(parent, text, name)
    if kfp_mlflow_run():  # KFP's parent: marked as a pipeline run that has results (advpatch compare finds it)
        client.set_tag(parent, TAG_KIND, "pipeline")
    else:
        client.set_terminated(parent, status="FINISHED")
    return parent


@reported()
def close_pipeline_run(ctx: RunContext, succeeded: bool) -> Optional[str]:
    """Mark the pipeline's own parent run FINISHED (the pipeline ``succeeded``) or FAILED; the pipeline's exit
    task calls this whatever happened. Under KFP's integration KFP closes its own parent, and this does nothing."""
    if kfp_mlflow_run() or not ctx.pipeline_run_id:
        return None
    configure()
    import mlflow

    client = mlflow.MlflowClient()
    parent = _pipeline_parent(client, ctx)
    if parent is not None:  # always, without KFP's integration and with a pipeline run
        client.set_terminated(parent, status="FINISHED" if succeeded else "FAILED")
    return parent

