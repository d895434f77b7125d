"""load_dataset: turn a data source into a Dataset artifact."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Output

from advpatch.settings import runtime_image


@dsl.component(base_image=runtime_image(), install_kfp_package=False)
def load_dataset(
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Artifact],
    source: str = "digits",
    split: str = "train",
    image_size: int = 0,
    color_mode: str = "auto",
    max_examples: int = 0,
    seed: int = 0,
    experiment_name: str = "",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
    task_name: str = "",
):
    """Import images and labels from a source into an advpatch Dataset artifact.

    Args:
        dataset: Output. The imported images (advpatch-dataset v1: uint8 shards + dataset.json).
        metrics: Output. num_examples and num_classes.
        summary: Output. This step's result as JSON (advpatch-step-result), for the report step.
        source: 'digits' (scikit-learn's digits, MNIST-framed 28x28), a folder (training/ and
            testing/ split folders, class subfolders of images, or MNIST IDX files) or an .npz file.
        split: 'train', 'test' or 'all'.
        image_size: Resize images to image_size x image_size; 0 keeps their size.
        color_mode: 'auto' (keep), 'grayscale' or 'rgb'.
        max_examples: Keep a random subset of this many images (drawn from seed); 0 keeps all.
        seed: Seed for the subset.
        experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        pipeline_run_id: KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER): groups steps in MLflow.
        pipeline_run_name: KFP run name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        task_name: KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    from advpatch import steps
    from advpatch.tracking import RunContext

    result = steps.load_dataset(
        source, dataset.path, split=split, image_size=image_size, color_mode=color_mode,
        max_examples=max_examples, seed=seed,
        ctx=RunContext(experiment_name, pipeline_run_id, pipeline_run_name, task_name),
    )
    dataset.metadata.update({"num_examples": int(result.metrics["num_examples"]),
                             "image_shape": result.details["image_shape"],
                             "class_names": result.details["class_names"]})
    steps.to_kfp(result, metrics=metrics, summary_path=summary.path)
