"""The MLflow model registry and run artifacts, as advpatch reads them: models by the seed's naming
pattern, loaded only as ``.keras`` files advpatch logged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple

from advpatch.errors import RegistryError
from advpatch.tracking import MODEL_METADATA_KEY, configure, tracking_uri


def registered_model_name(experiment_name: str, model_tag: str, architecture: str) -> str:
    """The seed's naming pattern: ``{experiment}_{tag}_{architecture}`` or ``{experiment}_{architecture}``."""
    parts = [experiment_name, model_tag, architecture] if model_tag else [experiment_name, architecture]
    return "_".join(parts)



def download_registered_model(uri: str, dest: os.PathLike[str] | str) -> Tuple[Path, Dict[str, Any]]:
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


def download_run_artifact(run_id: str, artifact_path: str, dest: os.PathLike[str] | str) -> Path:
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
