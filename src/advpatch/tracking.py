"""MLflow tracking: one parent run per pipeline run, one nested run per step, the model registry.

The tracking URI comes from ``MLFLOW_TRACKING_URI``. Without it, runs go to a local store under
``outputs/mlflow/`` (SQLite for runs and the registry, a folder for artifacts) that
``make mlflow-ui`` opens.

Two ways a step finds its place:

* **KFP's own MLflow integration** (KFP 2.17, with ``injectUserEnvVars``): KFP makes a parent run
  per pipeline run and a nested run per task, and hands the task its run as ``MLFLOW_RUN_ID``. The
  step logs into that run: it creates no parent, re-parents nothing, logs none of the task's input
  parameters (KFP logs them), and leaves the runs' status to KFP.
* **Otherwise** (local runs, clusters without the integration): steps of one pipeline run share a
  parent run found by the tag ``advpatch.pipeline_run_id``. The first step to arrive creates it; if
  two race, the older parent wins and the younger is deleted. The pipeline's exit task marks it
  FINISHED or FAILED (:func:`close_pipeline_run`), so a failed pipeline does not leave it RUNNING.

A task reads its pipeline run's id and name from its environment (:meth:`RunContext.current`), not
from a task input, so KFP's cache can still reuse a task's outputs across runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from advpatch import __version__, settings
from advpatch.errors import AdvpatchError

log = logging.getLogger(__name__)

TAG_PIPELINE_RUN_ID = "advpatch.pipeline_run_id"
TAG_KIND = "advpatch.kind"
TAG_STEP = "advpatch.step"
TAG_TASK = "kfp.task_name"
TAG_KFP_RUN = "kfp.run_name"
TAG_PARENT = "mlflow.parentRunId"
MODEL_METADATA_KEY = "advpatch"


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


def local_store() -> Path:
    return settings.output_dir() / "mlflow"


def tracking_uri() -> str:
    return os.environ.get(settings.ENV_TRACKING_URI) or f"sqlite:///{local_store() / 'mlflow.db'}"


def configure() -> str:
    """Point MLflow at :func:`tracking_uri` (creating the local store if that is where it points)."""
    settings.no_telemetry()
    import mlflow

    uri = tracking_uri()
    if not os.environ.get(settings.ENV_TRACKING_URI):
        local_store().mkdir(parents=True, exist_ok=True)  # its artifacts/: _local_artifact_root
    mlflow.set_tracking_uri(uri)
    return uri


def _local_artifact_root() -> Optional[str]:
    """Where a new experiment keeps its artifacts when the store is a local SQLite file: an
    ``artifacts`` folder beside the database (MLflow's own default is ``./mlruns`` under whatever
    directory the step happens to run in). ``None`` (the server decides) for any other store."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    root = Path(uri[len("sqlite:///"):]).parent / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve().as_uri()


def registered_model_name(experiment_name: str, model_tag: str, architecture: str) -> str:
    """The seed's naming pattern: ``{experiment}_{tag}_{architecture}`` or ``{experiment}_{architecture}``."""
    parts = [experiment_name, model_tag, architecture] if model_tag else [experiment_name, architecture]
    return "_".join(parts)


def _experiment_id(name: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = _local_artifact_root()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a sibling step
        return mlflow.get_experiment_by_name(name).experiment_id


def _parent_run_id(client, experiment_id: str, ctx: RunContext) -> str:
    query = f"tags.`{TAG_PIPELINE_RUN_ID}` = '{ctx.pipeline_run_id}' and tags.`{TAG_KIND}` = 'pipeline'"

    def oldest() -> Optional[str]:
        runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
        return runs[0].info.run_id if runs else None

    found = oldest()
    if found:
        return found
    mine = client.create_run(
        experiment_id,
        run_name=ctx.pipeline_run_name or f"pipeline-{ctx.pipeline_run_id}",
        tags={TAG_PIPELINE_RUN_ID: ctx.pipeline_run_id, TAG_KIND: "pipeline", TAG_KFP_RUN: ctx.pipeline_run_name},
    ).info.run_id
    winner = oldest() or mine
    if winner != mine:
        client.delete_run(mine)
    return winner


class StepRun:
    """The MLflow run of one step; log through it."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_params(self, values: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params({k: v for k, v in values.items()})

    def log_metrics(self, values: Mapping[str, float], step: Optional[int] = None) -> None:
        import math

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

    def log_dataset(self, path: str, tar_name: str, dataset_name: str) -> str:
        """Log a dataset folder as ``tar_name`` holding ``dataset_name/`` (the seed's layout, e.g.
        ``adv_testing.tar`` with ``adversarial_patched_data/``); returns the
        ``mlflow-run://RUN_ID/TAR_NAME#FOLDER`` source that brings it back (see
        :mod:`advpatch.sources`)."""
        import tempfile

        import mlflow

        from advpatch.files import create_tar

        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(create_tar(path, Path(tmp) / tar_name, dataset_name)))
        return f"mlflow-run://{self.run_id}/{tar_name}#{dataset_name}"

    def log_model(self, model, metadata: Dict[str, Any], registered_name: str = "") -> Tuple[str, str]:
        """Log a Keras model (and register it when ``registered_name`` is given).

        Returns ``(model_uri, registered_version)``; the version is ``""`` when not registered.
        """
        import mlflow

        import keras
        import tensorflow as tf

        # Explicit requirements: MLflow's inference of them reloads the model in a subprocess.
        requirements = [f"advpatch=={__version__}", f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
        info = mlflow.keras.log_model(
            model,
            name="model",
            registered_model_name=registered_name or None,
            pip_requirements=requirements,
            metadata={MODEL_METADATA_KEY: metadata},
        )
        version = str(info.registered_model_version or "")
        uri = f"models:/{registered_name}/{version}" if version else info.model_uri
        return uri, version


@contextlib.contextmanager
def step_run(step: str, ctx: RunContext, params: Mapping[str, Any],
             extra: Optional[Mapping[str, Any]] = None) -> Iterator[StepRun]:
    """Open the MLflow run of one step: KFP's nested run for the task when KFP's MLflow integration
    hands one over, else a run nested under the pipeline's parent run (when there is one).

    ``params`` (the task's input parameters) and ``extra`` (more settings) are logged on entry;
    under KFP's integration only ``extra``, as KFP logs the inputs itself. The run ends FINISHED,
    or FAILED if the body raises (KFP then sets its own runs' final status).
    """
    configure()
    import mlflow

    tags = {TAG_STEP: step, TAG_KIND: "step", "advpatch.version": __version__}
    kfp_run = kfp_mlflow_run()
    if kfp_run:
        run_args: Dict[str, Any] = {"run_id": kfp_run}
        logged = dict(extra or {})
    else:
        experiment_id = _experiment_id(ctx.experiment)
        if ctx.task_name:
            tags[TAG_TASK] = ctx.task_name
        if ctx.pipeline_run_id:
            tags[TAG_PIPELINE_RUN_ID] = ctx.pipeline_run_id
            tags[TAG_KFP_RUN] = ctx.pipeline_run_name
            tags[TAG_PARENT] = _parent_run_id(mlflow.MlflowClient(), experiment_id, ctx)
        run_args = {"experiment_id": experiment_id, "run_name": ctx.task_name or step}
        logged = {**params, **(extra or {})}
    started = time.monotonic()
    try:
        with mlflow.start_run(**run_args) as run:
            mlflow.MlflowClient().log_batch(run.info.run_id, tags=[_tag(k, v) for k, v in tags.items()])
            step_run_ = StepRun(run.info.run_id)
            step_run_.log_params(logged)
            log.info("MLflow run %s (%s)%s", run.info.run_id, step, " (KFP's)" if kfp_run else "")
            yield step_run_
            step_run_.log_metrics({"duration_s": time.monotonic() - started})
    finally:
        if kfp_run:  # mlflow.end_run() removes MLFLOW_RUN_ID from the environment: the task's, put back
            os.environ[settings.ENV_MLFLOW_RUN_ID] = kfp_run


def _tag(key: str, value: Any):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))


def _pipeline_parent(client, ctx: RunContext) -> Optional[str]:
    """The pipeline's parent run: KFP's (the parent of this task's run) or advpatch's own."""
    kfp_run = kfp_mlflow_run()
    if kfp_run:
        return client.get_run(kfp_run).data.tags.get(TAG_PARENT)
    if not ctx.pipeline_run_id:
        return None
    return _parent_run_id(client, _experiment_id(ctx.experiment), ctx)


def finish_pipeline_run(ctx: RunContext, *, dicts: Optional[Mapping[str, Any]] = None,
                        texts: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Attach ``dicts`` (as JSON) and ``texts`` to the pipeline's parent run (the report step calls
    this) and, unless KFP's integration owns the run, mark it FINISHED. Returns the parent run's
    id, or ``None`` outside a pipeline."""
    configure()
    import mlflow

    client = mlflow.MlflowClient()
    parent = _pipeline_parent(client, ctx)
    if parent is None:
        return None
    for name, data in (dicts or {}).items():
        client.log_dict(parent, data, name)
    for name, text in (texts or {}).items():
        client.log_text(parent, text, name)
    if not kfp_mlflow_run():
        client.set_terminated(parent, status="FINISHED")
    return parent


def close_pipeline_run(ctx: RunContext, pipeline_state: str) -> Optional[str]:
    """Mark the pipeline's own parent run FINISHED (the pipeline succeeded) or FAILED (anything
    else); the pipeline's exit task calls this whatever happened. Under KFP's integration KFP closes
    its own parent, and this does nothing."""
    if kfp_mlflow_run() or not ctx.pipeline_run_id:
        return None
    configure()
    import mlflow

    client = mlflow.MlflowClient()
    parent = _parent_run_id(client, _experiment_id(ctx.experiment), ctx)
    client.set_terminated(parent, status="FINISHED" if pipeline_state == "SUCCEEDED" else "FAILED")
    return parent


class RegistryError(AdvpatchError):
    """A registered model cannot be found or was not logged by advpatch as a ``.keras`` file."""


def download_registered_model(uri: str, dest: os.PathLike | str) -> Tuple[Path, Dict[str, Any]]:
    """A registered model's ``.keras`` file, downloaded into ``dest``, and its advpatch metadata.

    Only the file is fetched: :func:`advpatch.models.resolve` loads it with ``safe_mode=True``, as
    it loads a Model artifact (``mlflow.keras.load_model`` would follow the server's safe-mode
    setting, and load an exported SavedModel with TensorFlow)."""
    configure()
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as e:
        raise RegistryError(f"cannot find the model {uri} in MLflow ({tracking_uri()}): {e}") from None
    meta = info.metadata or {}
    flavor = info.flavors.get("keras", {})
    if MODEL_METADATA_KEY not in meta or not flavor:
        raise RegistryError(f"model {uri} was not logged by advpatch (no Keras flavor with '{MODEL_METADATA_KEY}' "
                            "metadata)")
    if flavor.get("save_exported_model"):
        raise RegistryError(f"model {uri} is an exported TensorFlow SavedModel; advpatch loads only .keras files")
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dest)))
    data = local / flavor.get("data", "model")  # mlflow.keras' layout: data/model.keras
    return Path(f"{data / 'model' if data.is_dir() else data}.keras"), meta[MODEL_METADATA_KEY]


def download_run_artifact(run_id: str, artifact_path: str, dest: os.PathLike | str) -> Path:
    """A file an MLflow run logged, downloaded into ``dest``."""
    configure()
    import mlflow
    from mlflow.exceptions import MlflowException

    from advpatch.params import ParameterError

    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                        dst_path=str(dest)))
    except (MlflowException, OSError) as e:
        raise ParameterError(f"cannot fetch {artifact_path!r} from MLflow run {run_id!r}: {e}") from None
