"""MLflow tracking: the runs (:mod:`.runs`: one parent run per pipeline run, one nested run per
step), what happens when the server fails (:mod:`.faults`) and the model registry
(:mod:`.registry`). The package's face is :mod:`.runs`: ``from advpatch.tracking import step_run``."""

from advpatch.errors import TrackingError
from advpatch.tracking.runs import (
                                    MODEL_METADATA_KEY,
                                    TAG_KFP_RUN,
                                    TAG_KIND,
                                    TAG_PARENT,
                                    TAG_PIPELINE_RUN_ID,
                                    TAG_STEP,
                                    TAG_TASK,
                                    RunContext,
                                    StepRun,
                                    artifact_uri,
                                    check_server,
                                    close_pipeline_run,
                                    configure,
                                    finish_pipeline_run,
                                    kfp_mlflow_run,
                                    step_run,
                                    tracking_uri,
)

__all__ = ["MODEL_METADATA_KEY", "TAG_KFP_RUN", "TAG_KIND", "TAG_PARENT", "TAG_PIPELINE_RUN_ID", "TAG_STEP", "TAG_TASK",
           "RunContext", "StepRun", "TrackingError", "artifact_uri", "check_server", "close_pipeline_run", "configure",
           "finish_pipeline_run", "kfp_mlflow_run", "step_run", "tracking_uri"]
