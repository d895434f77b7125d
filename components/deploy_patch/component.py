"""deploy_patch: put patches from a patch set on a dataset."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from advpatch.settings import runtime_image


@dsl.component(base_image=runtime_image(), install_kfp_package=False)
def deploy_patch(
    data: Input[Dataset],
    patches: Input[Artifact],
    patched_data: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Artifact],
    patch_deployment_method: str = "corrupt",
    patch_application_rate: float = 1.0,
    patch_scale: float = 0.4,
    batch_size: int = 1024,
    rotation_max: float = 22.5,
    scale_min: float = 0.1,
    scale_max: float = 1.0,
    patch_location: str = "random",
    seed: int = 0,
    output_tar_name: str = "adv_testing.tar",
    output_dataset_name: str = "adversarial_patched_data",
    experiment_name: str = "",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
    task_name: str = "",
):
    """Apply adversarial patches to a dataset.

    Args:
        data: The images to patch.
        patches: A patch set from gen_patch (no model needed to apply it).
        patched_data: Output. The dataset with per-image provenance columns: patched,
            patch_index, patch_target, patch_scale, patch_angle, patch_x, patch_y, source_index.
        metrics: Output. num_patched, and for l_inf, l1, l2, cosine_similarity and wasserstein
            between clean and patched images: mean, median, stdev, iqr, min, max.
        summary: Output. This step's result as JSON (advpatch-step-result), for the report step.
        patch_deployment_method: 'corrupt' (patched images replace their originals) or
            'augment' (patched copies are stored alongside every original).
        patch_application_rate: Share of images that get a patch, in [0, 1] (exact count).
        patch_scale: Patch side as a share of the image's shorter side, in [0, 1]; 0 draws a
            scale per image from [scale_min, scale_max].
        batch_size: Images per batch (>= 1).
        rotation_max: Random rotation in [-rotation_max, rotation_max] degrees, in [0, 180].
        scale_min: In (0, 1), smaller than scale_max (used when patch_scale is 0).
        scale_max: In (0, 1].
        patch_location: 'random' (anywhere the patches' masks fit wholly inside the image;
            centred along an axis where they cannot fit) or 'center'.
        seed: Same seed, same patched bytes.
        output_tar_name: Log the output to this step's MLflow run as this tar file, for later
            load_dataset_from_mlruns (the seed's adv_testing.tar); empty: do not log.
        output_dataset_name: The folder inside it (the seed's adversarial_patched_data).
        experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        pipeline_run_id: KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER): groups steps in MLflow.
        pipeline_run_name: KFP run name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        task_name: KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    from advpatch import steps
    from advpatch.tracking import RunContext

    result = steps.deploy_patch(
        data.path, patches.path, patched_data.path,
        patch_deployment_method=patch_deployment_method, patch_application_rate=patch_application_rate,
        patch_scale=patch_scale, batch_size=batch_size, rotation_max=rotation_max, scale_min=scale_min,
        scale_max=scale_max, patch_location=patch_location, seed=seed, output_tar_name=output_tar_name,
        output_dataset_name=output_dataset_name,
        ctx=RunContext(experiment_name, pipeline_run_id, pipeline_run_name, task_name),
    )
    patched_data.metadata.update({"num_examples": int(result.metrics["num_examples"]),
                                  "num_patched": int(result.metrics["num_patched"])})
    steps.to_kfp(result, metrics=metrics, summary_path=summary.path)
