"""gen_patch: generate targeted adversarial patches against a model."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from advpatch.settings import runtime_image


@dsl.component(base_image=runtime_image(), install_kfp_package=False)
def gen_patch(
    data: Input[Dataset],
    patches: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Artifact],
    model: Input[Model] = None,
    model_uri: str = "",
    model_architecture: str = "",
    learning_rate: float = 0.1,
    max_iter: int = 500,
    patch_target: int = -1,
    num_patch: int = 1,
    num_patch_gen_samples: int = 40,
    rotation_max: float = 22.5,
    scale_min: float = 0.1,
    scale_max: float = 1.0,
    patch_location: str = "random",
    patch_shape: str = "square",
    patch_size: int = 0,
    batch_size: int = 40,
    lr_decay: float = 0.3,
    patch_loss: str = "auto",
    seed: int = 0,
    experiment_name: str = "",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
    task_name: str = "",
):
    """Generate targeted adversarial patches by expectation over transformation (Brown et al.).

    Args:
        data: Images to draw the generation samples from.
        patches: Output. The patch set (advpatch-patchset v1: patches.npz, patchset.json, PNG
            previews). Applying it needs neither the model nor the attack.
        metrics: Output. Per patch: first/final loss, targeted success and accuracy on its
            generation images at fresh placements, seconds.
        summary: Output. This step's result as JSON (advpatch-step-result), for the report step.
        model: A Model artifact. Give this or model_uri.
        model_uri: A registered MLflow model, 'models:/NAME/VERSION'.
        model_architecture: Optional check: the model's architecture must be this one.
        learning_rate: Adam step size on patch pixels in [0, 1] (> 0); the rate of the first steps.
        max_iter: Passes over the generation images (>= 1), as ART counts iterations.
        patch_target: Target class index; -1 draws a random target per patch.
        num_patch: Number of patches (each with its own target and generation images).
        num_patch_gen_samples: Generation images per patch, drawn among images not of the target.
        rotation_max: Random rotation in [-rotation_max, rotation_max] degrees, in [0, 180].
        scale_min: Smallest patch side as a share of the image's shorter side, in (0, 1).
        scale_max: Largest, in (0, 1], greater than scale_min.
        patch_location: 'random' (anywhere the patch's mask fits wholly inside the image; centred
            along an axis where it cannot fit) or 'center'.
            The same distribution should be used to deploy; it decides whether a patch learns
            target features or only hides the object (see README).
        patch_shape: 'square' or 'circle'.
        patch_size: Patch resolution in pixels; 0: the image's shorter side.
        batch_size: Generation images per optimization step.
        lr_decay: Share of the steps, at the end, over which the learning rate decays (cosine) to
            1% of learning_rate, in [0, 1]; 0 keeps it constant, as ART does.
        patch_loss: 'auto' (default: 'success' when patch_location is 'center', else
            'combined'), 'cross_entropy' (mean -log p(target), as Brown et al. and ART), 'success'
            (-log of the mean p(target): the expected targeted success) or 'combined' (their sum).
            See README, "Patch attacks".
        seed: Same seed, same patch bytes.
        experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        pipeline_run_id: KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER): groups steps in MLflow.
        pipeline_run_name: KFP run name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        task_name: KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    from advpatch import steps
    from advpatch.tracking import RunContext

    result = steps.gen_patch(
        data.path, patches.path,
        model_path=model.path if model is not None else "", model_uri=model_uri,
        model_architecture=model_architecture, learning_rate=learning_rate, max_iter=max_iter,
        patch_target=patch_target, num_patch=num_patch, num_patch_gen_samples=num_patch_gen_samples,
        rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max, patch_location=patch_location,
        patch_shape=patch_shape, patch_size=patch_size, batch_size=batch_size, lr_decay=lr_decay,
        patch_loss=patch_loss, seed=seed,
        ctx=RunContext(experiment_name, pipeline_run_id, pipeline_run_name, task_name),
    )
    patches.metadata.update({"format": "advpatch-patchset", "targets": result.details["targets"]})
    steps.to_kfp(result, metrics=metrics, summary_path=summary.path)
