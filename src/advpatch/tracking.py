"""MLflow tracking: one parent run per pipeline run, one nested run per step, the model registry.

The tracking URI comes from ``MLFLOW_TRACKING_URI``. Without it, runs go to a local store under
``outputs/mlflow/`` (SQLite for runs and the registry, a folder for artifacts) that
``make mlflow-ui`` opens.

Steps of one pipeline run find their shared parent run by the tag ``advpatch.pipeline_run_id``
(the KFP run id). The first step to arrive creates it; if two steps race, the older parent wins and
the younger is deleted, so every step nests under the same one.
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

    def log_dataset(self, path: str, tar_name: str, dataset_name: str) -> None:
        """Log a dataset folder as ``tar_name`` holding ``dataset_name/`` (the seed's layout, e.g.
        ``adv_testing.tar`` with ``adversarial_patched_data/``), for :func:`fetch_dataset`."""
        import tarfile
        import tempfile

        import mlflow

        check_dataset_names(tar_name, dataset_name)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / tar_name
            with tarfile.open(archive, "w") as tar:
                tar.add(path, arcname=dataset_name)
            mlflow.log_artifact(str(archive))

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
def step_run(step: str, ctx: RunContext, params: Mapping[str, Any]) -> Iterator[StepRun]:
    """Open the MLflow run of one step, nested under its pipeline's run when there is one.

    Parameters are logged on entry; the run ends FINISHED, or FAILED if the body raises.
    """
    configure()
    import mlflow

    experiment_id = _experiment_id(ctx.experiment)
    tags = {TAG_STEP: step, TAG_KIND: "step", "advpatch.version": __version__}
    if ctx.task_name:
        tags[TAG_TASK] = ctx.task_name
    if ctx.pipeline_run_id:
        tags[TAG_PIPELINE_RUN_ID] = ctx.pipeline_run_id
        tags[TAG_KFP_RUN] = ctx.pipeline_run_name
        tags[TAG_PARENT] = _parent_run_id(mlflow.MlflowClient(), experiment_id, ctx)
    started = time.monotonic()
    with mlflow.start_run(experiment_id=experiment_id, run_name=ctx.task_name or step, tags=tags) as run:
        step_run_ = StepRun(run.info.run_id)
        step_run_.log_params(params)
        log.info("MLflow run %s (%s) in experiment %r", run.info.run_id, step, ctx.experiment)
        yield step_run_
        step_run_.log_metrics({"duration_s": time.monotonic() - started})


def finish_pipeline_run(ctx: RunContext, status: str = "FINISHED") -> Optional[str]:
    """Mark the pipeline's parent run as ended (the last step of a pipeline calls this)."""
    if not ctx.pipeline_run_id:
        return None
    configure()
    import mlflow

    client = mlflow.MlflowClient()
    parent = _parent_run_id(client, _experiment_id(ctx.experiment), ctx)
    client.set_terminated(parent, status=status)
    return parent


def load_registered_model(uri: str):
    """(keras model, advpatch metadata dict) for a ``models:/NAME/VERSION`` URI."""
    configure()
    import mlflow

    meta = mlflow.models.get_model_info(uri).metadata or {}
    if MODEL_METADATA_KEY not in meta:
        raise ValueError(f"model {uri} was not logged by advpatch (no '{MODEL_METADATA_KEY}' metadata)")
    return mlflow.keras.load_model(uri), meta[MODEL_METADATA_KEY]


def check_dataset_names(tar_name: str, dataset_name: str) -> None:
    from advpatch.params import ParameterError

    if not tar_name.endswith(".tar") or "/" in tar_name or tar_name.startswith("."):
        raise ParameterError(f"dataset_tar_name must be a plain file name ending in .tar, got {tar_name!r}")
    if not dataset_name or "/" in dataset_name or dataset_name in (".", ".."):
        raise ParameterError(f"dataset_name must be a plain folder name, got {dataset_name!r}")


def fetch_dataset(run_id: str, tar_name: str, dataset_name: str, dest: os.PathLike | str) -> Path:
    """Bring back a dataset an earlier run logged with :meth:`StepRun.log_dataset` (the seed's
    ``load_dataset_from_mlruns``). The archive is checked member by member: only regular files and
    folders under ``dataset_name/``, no links, no absolute or parent paths."""
    import tarfile
    import tempfile

    from advpatch.params import ParameterError

    check_dataset_names(tar_name, dataset_name)
    if not run_id:
        raise ParameterError("load_dataset_from_mlruns=True needs the run id of the run that logged the dataset")
    configure()
    import mlflow
    from mlflow.exceptions import MlflowException

    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=tar_name, dst_path=tmp)
        except (MlflowException, OSError) as e:
            raise ParameterError(f"cannot fetch {tar_name!r} from MLflow run {run_id!r}: {e}") from None
        with tarfile.open(local) as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if (not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or ".." in parts
                        or not parts or parts[0] != dataset_name):
                    raise ParameterError(f"{tar_name} from run {run_id} holds an unsafe or foreign entry {m.name!r}")
            if not any(Path(m.name).parts[0] == dataset_name for m in members):
                raise ParameterError(f"{tar_name} from run {run_id} has no folder {dataset_name!r}")
            tar.extractall(dest, members=members, filter="data")
    return dest / dataset_name
