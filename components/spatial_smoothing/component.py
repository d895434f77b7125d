"""spatial_smoothing: a preprocessing defence on a Dataset artifact."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from advpatch.settings import runtime_image


@dsl.component(base_image=runtime_image(), install_kfp_package=False)
def spatial_smoothing(
    defended_data: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Artifact],
    data: Input[Dataset] = None,
    spatial_smoothing_window_size: int = 3,
    spatial_smoothing_apply_fit: bool = False,
    spatial_smoothing_apply_predict: bool = True,
    data_role: str = "predict",
    batch_size: int = 256,
    load_dataset_from_mlruns: bool = False,
    dataset_run_id: str = "",
    dataset_tar_name: str = "adv_testing.tar",
    dataset_name: str = "adversarial_patched_data",
    output_tar_name: str = "",
    seed: int = 0,
    experiment_name: str = "",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
    task_name: str = "",
):
    """Median filtering over a window (ART SpatialSmoothing).

    Args:
        defended_data: Output. The defended images; per-image columns (patch provenance) kept.
        metrics: Output. applied (0/1), num_examples, num_changed (images changed or added).
        summary: Output. This step's result as JSON (advpatch-step-result), for the report step.
        data: The images to defend (or use load_dataset_from_mlruns).
        spatial_smoothing_window_size: Side of the median filter window (>= 1).
        spatial_smoothing_apply_fit: Apply to training data.
        spatial_smoothing_apply_predict: Apply to data used for prediction.
        data_role: What the input is used for: 'fit' (training) or 'predict'. The defence applies
            when its apply_fit / apply_predict flag for that role is set; otherwise the data passes
            through unchanged (the provenance says so).
        batch_size: Images per batch (>= 1).
        load_dataset_from_mlruns: Read the input from an earlier MLflow run instead of data.
        dataset_run_id: That run's id.
        dataset_tar_name: The tar file that run logged (for example adv_testing.tar).
        dataset_name: The folder inside it (for example adversarial_patched_data).
        output_tar_name: Log the output to this step's MLflow run as this tar file (holding a folder
            named after the defence), for later load_dataset_from_mlruns; empty: do not log.
        seed: Same seed, same bytes.
        experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        pipeline_run_id: KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER): groups steps in MLflow.
        pipeline_run_name: KFP run name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        task_name: KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    from advpatch import steps
    from advpatch.tracking import RunContext

    result = steps.defend(
        "spatial_smoothing", data.path if data is not None else "", defended_data.path,
        settings={"spatial_smoothing_window_size": spatial_smoothing_window_size},
        apply_fit=spatial_smoothing_apply_fit, apply_predict=spatial_smoothing_apply_predict,
        data_role=data_role, batch_size=batch_size, seed=seed, load_dataset_from_mlruns=load_dataset_from_mlruns,
        dataset_run_id=dataset_run_id, dataset_tar_name=dataset_tar_name, dataset_name=dataset_name,
        output_tar_name=output_tar_name,
        ctx=RunContext(experiment_name, pipeline_run_id, pipeline_run_name, task_name),
    )
    defended_data.metadata.update({"num_examples": int(result.metrics["num_examples"]),
                                   "defence_applied": bool(result.metrics["applied"])})
    steps.to_kfp(result, metrics=metrics, summary_path=summary.path)
