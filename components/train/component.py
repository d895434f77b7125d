"""train: fit a model architecture on a Dataset artifact."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from advpatch.settings import runtime_image


@dsl.component(base_image=runtime_image(), install_kfp_package=False)
def train(
    model: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Artifact],
    training_data: Input[Dataset] = None,
    testing_data: Input[Dataset] = None,
    model_architecture: str = "le_net",
    optimizer: str = "adam",
    epochs: float = 10.0,
    batch_size: int = 32,
    learning_rate: float = 0.001,
    validation_split: float = 0.0,
    model_tag: str = "",
    register_model: bool = False,
    apply_defense: bool = False,
    pgd_eps: float = 0.1,
    pgd_eps_step: float = 0.025,
    pgd_max_iter: int = 10,
    pgd_ratio: float = 0.5,
    load_dataset_from_mlruns: bool = False,
    training_dataset_run_id: str = "",
    dataset_tar_name: str = "adv_testing.tar",
    dataset_name: str = "adversarial_patched_data",
    seed: int = 0,
    experiment_name: str = "",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
    task_name: str = "",
):
    """Train a model architecture from random weights.

    Args:
        training_data: The training images (for example a deploy_patch output, to train on
            patched data).
        model: Output. The trained model (advpatch-model v1: model.keras + model.json).
        metrics: Output. Final training/validation loss and accuracy; test accuracy and loss
            when testing_data is given.
        summary: Output. This step's result as JSON (advpatch-step-result), for the report step.
        testing_data: Optional test images to evaluate the trained model on.
        model_architecture: 'le_net', 'shallow_net', 'alex_net', 'resnet50' or 'vgg16'.
        optimizer: 'rmsprop', 'adam', 'adagrad' or 'sgd'.
        epochs: Passes over the training data; may be fractional (> 0).
        batch_size: Images per step (>= 1).
        learning_rate: The optimizer's initial learning rate (> 0).
        validation_split: Share of training images held out for validation, in [0, 1).
        model_tag: Optional tag in the registered name {experiment}_{model_tag}_{model_architecture}.
        register_model: Register the model in the MLflow model registry.
        apply_defense: PGD adversarial training (Madry et al.) instead of plain training.
        pgd_eps: PGD L-inf radius on [0, 1] pixels, in (0, 1]. Also used for the test PGD accuracy.
        pgd_eps_step: PGD step size, in (0, 1].
        pgd_max_iter: PGD iterations (>= 1).
        pgd_ratio: Share of each batch replaced by its PGD examples, in (0, 1].
        load_dataset_from_mlruns: Train on a dataset an earlier MLflow run logged, instead of
            training_data (the seed's cross-run reuse).
        training_dataset_run_id: That run's id.
        dataset_tar_name: The tar file it logged (deploy_patch logs adv_testing.tar).
        dataset_name: The folder inside (deploy_patch: adversarial_patched_data).
        seed: Seeds weights, shuffling and the validation split: same seed, same weights.
        experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        pipeline_run_id: KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER): groups steps in MLflow.
        pipeline_run_name: KFP run name (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        task_name: KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    from advpatch import steps
    from advpatch.tracking import RunContext

    result = steps.train(
        training_data.path if training_data is not None else "", model.path,
        test_path=testing_data.path if testing_data is not None else "",
        model_architecture=model_architecture, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, validation_split=validation_split, model_tag=model_tag,
        register_model=register_model, apply_defense=apply_defense, pgd_eps=pgd_eps, pgd_eps_step=pgd_eps_step,
        pgd_max_iter=pgd_max_iter, pgd_ratio=pgd_ratio, load_dataset_from_mlruns=load_dataset_from_mlruns,
        training_dataset_run_id=training_dataset_run_id, dataset_tar_name=dataset_tar_name,
        dataset_name=dataset_name, seed=seed,
        ctx=RunContext(experiment_name, pipeline_run_id, pipeline_run_name, task_name),
    )
    model.metadata.update({"architecture": model_architecture, "mlflow_model_uri": result.details["model_uri"]})
    steps.to_kfp(result, metrics=metrics, summary_path=summary.path)
