"""Names and defaults read from the environment: defined once, used everywhere."""

from __future__ import annotations

import os
from pathlib import Path

from advpatch import __version__

# Environment variable names.
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "ADVPATCH_EXPERIMENT"
ENV_OUTPUT_DIR = "ADVPATCH_OUTPUT_DIR"
ENV_IMAGE = "ADVPATCH_IMAGE"
ENV_IMAGE_REGISTRY = "ADVPATCH_IMAGE_REGISTRY"
ENV_IMAGE_TAG = "ADVPATCH_IMAGE_TAG"
ENV_S3_ENDPOINT = "ADVPATCH_S3_ENDPOINT"
ENV_MLFLOW_S3_ENDPOINT = "MLFLOW_S3_ENDPOINT_URL"
ENV_AWS_ENDPOINT = "AWS_ENDPOINT_URL"
S3_ENDPOINT_VARS = (ENV_S3_ENDPOINT, ENV_MLFLOW_S3_ENDPOINT, ENV_AWS_ENDPOINT)
"""Where the S3 endpoint is read from, first set wins (MLflow's and boto's own names as fallbacks)."""
ENV_PIPELINE_RUN_ID = "ADVPATCH_PIPELINE_RUN_ID"
ENV_PIPELINE_RUN_NAME = "ADVPATCH_PIPELINE_RUN_NAME"
"""A task's pipeline run, from its environment, not from a task input (which would defeat KFP's
cache): on a cluster from its pod's labels (the compiled pipeline maps them), locally set by
``advpatch run``."""
ENV_MLFLOW_RUN_ID = "MLFLOW_RUN_ID"
"""Set by KFP 2.17's MLflow integration (``injectUserEnvVars``): the nested run KFP made for the task."""
ENV_KFP_MLFLOW = "ADVPATCH_KFP_MLFLOW"
"""``true`` in every task of a pipeline compiled with ``--kfp-mlflow``: the task must then find
KFP's run and tracking URI in its environment, and fails rather than log nowhere."""
ENV_MLFLOW_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_MLFLOW_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
ENV_S3_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_S3_REGION = "ADVPATCH_S3_REGION"
ENV_WORKERS = "ADVPATCH_WORKERS"
"""Threads a step uses for work per image (decoding, JPEG, ...); default: the CPUs it may run on."""

DEFAULT_EXPERIMENT = "advpatch"
DEFAULT_IMAGE_REGISTRY = "ghcr.io/advpatch"
IMAGE_NAME = "advpatch"


def runtime_image() -> str:
    """The container image every component runs in.

    ``ADVPATCH_IMAGE`` overrides it whole; otherwise it is
    ``$ADVPATCH_IMAGE_REGISTRY/advpatch:$ADVPATCH_IMAGE_TAG`` with the package version as the
    default tag, so image and code never drift apart. Read when the components module is
    first imported, i.e. at pipeline compile time.
    """
    if os.environ.get(ENV_IMAGE):
        return os.environ[ENV_IMAGE]
    registry = os.environ.get(ENV_IMAGE_REGISTRY, DEFAULT_IMAGE_REGISTRY).rstrip("/")
    tag = os.environ.get(ENV_IMAGE_TAG, __version__)
    return f"{registry}/{IMAGE_NAME}:{tag}"


def output_dir() -> Path:
    """Where local runs write (the MLflow store, the KFP runner's artifacts, each run's
    ``results.json`` and log): ``./outputs`` by default, ``$ADVPATCH_OUTPUT_DIR`` when set."""
    return Path(os.environ.get(ENV_OUTPUT_DIR, "outputs")).resolve()


def local_tracking_uri() -> str:
    """The MLflow store runs use without ``MLFLOW_TRACKING_URI``: SQLite under :func:`output_dir`."""
    return f"sqlite:///{output_dir() / 'mlflow' / 'mlflow.db'}"


def experiment_name(explicit: str = "") -> str:
    return explicit or os.environ.get(ENV_EXPERIMENT, DEFAULT_EXPERIMENT)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter; call before importing TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def no_telemetry() -> None:
    """MLflow phones home unless told not to."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")


KERAS_EXTRAS = ("sklearn", "matplotlib.pyplot", "pandas")
"""Packages Keras imports at start-up when they are installed, for features advpatch never uses
(scikit-learn wrappers, image-gallery plots, DataFrame inputs): 1.2-1.5 s of every task that
imports TensorFlow, measured on 2 cores."""


class _KerasExtras:
    """A meta-path finder that refuses :data:`KERAS_EXTRAS` to Keras's own modules (Keras treats
    them as absent, as it does when they are not installed); everyone else imports them as usual."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name not in KERAS_EXTRAS:
            return None
        import sys
        from types import FrameType
        from typing import Optional

        frame: Optional[FrameType] = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            frame = frame.f_back
        if frame is not None and frame.f_globals.get("__name__", "").startswith("keras."):
            raise ModuleNotFoundError(f"{name} is not offered to Keras (advpatch.settings.skip_keras_extras)",
                                      name=name)
        return None


def skip_keras_extras() -> None:
    """Keep Keras from importing :data:`KERAS_EXTRAS` (call before importing TensorFlow; once)."""
    import sys

    if not any(isinstance(f, _KerasExtras) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasExtras())
