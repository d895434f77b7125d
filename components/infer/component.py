"""infer: evaluate a model on a Dataset artifact."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from advpatch.settings import runtime_image


@dsl.component(base_image=runtime_image(), install_kfp_package=False)
def infer(
    data: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    predictions: Output[Artifact],
    summary: Output[Artifact],
    model: Input[Model] = None,
    model_uri: str = "",
    model_architecture: str = "",
    batch_size: int = 256,
    label: str = "",
    seed: int = 0,
    experiment_name: str = "",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
    task_name: str = "",
):
    """Evaluate a model on a dataset.

    Args:
        data: The images to classify.
        metrics: Output. accuracy, loss, precision/recall/F1 (macro and weighted), one-vs-rest AUC.
        confusion: Output. The confusion matrix (shown by the KFP UI).
        predictions: Output. Per-image CSV: label, prediction, confidence and the dataset's
            per-image provenance columns.
        summary: Output. This step's result as JSON (advpatch-step-result), for the report step.
        model: A Model artifact from train or init_model. Give this or model_uri.
        model_uri: A registered MLflow model, 'models:/NAME/VERSION', instead of a Model artifact.
        model_architecture: Optional check: the model's architecture must be this one.
        batch_size: Images per forward pass (>= 1).
        label: Row name in the results table (for example 'baseline / patched').
        seed: Seeds TensorFlow (inference itself is deterministic).
        experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        pipeline_run_id: KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER): groups steps in MLflow.
        pipeline_run_name: KFP run name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        task_name: KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    from advpatch import steps
    from advpatch.tracking import RunContext

    result = steps.infer(
        data.path, predictions.path,
        model_path=model.path if model is not None else "", model_uri=model_uri,
        model_architecture=model_architecture, batch_size=batch_size, seed=seed, label=label,
        ctx=RunContext(experiment_name, pipeline_run_id, pipeline_run_name, task_name),
    )
    steps.to_kfp(result, metrics=metrics, classification_metrics=confusion, summary_path=summary.path)
