"""The MNIST adversarial-patch experiment.

load (train, test) -> train LeNet -> gen_patch (on training images) -> deploy_patch (test set,
corrupt) -> infer on clean and on patched test images -> report.

Runs on the embedded digits by default (``data_dir='digits'``) or on an MNIST laid out as in the
seed demo (``training/`` and ``testing/`` folders of class subfolders of PNGs).

``patch_location`` is used for both generation and deployment. ``center`` (the default here) gives
patches that turn digits into the target class; ``random`` gives patches that work anywhere but
mostly hide strokes (lower accuracy, little targeted success). See README, "Patch attacks".
"""

from kfp import dsl
from kfp.dsl import Artifact

from advpatch.components import deploy_patch, gen_patch, infer, load_dataset, report, train
from advpatch.pipelines.common import place_all, report_inputs, tracking
from advpatch.pipelines.placement import LOCAL, Placement


def build(placement: Placement = LOCAL):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.pipelines.placement`)."""

    @dsl.pipeline(
        name="advpatch-mnist-patch",
        description="Train LeNet-5 on MNIST (or the embedded digits), attack it with targeted adversarial "
                    "patches, evaluate on clean and patched test images; one results table.",
    )
    def mnist_patch(
        data_dir: str = "digits",
        image_size: int = 28,
        model_architecture: str = "le_net",
        optimizer: str = "adam",
        epochs: float = 15.0,
        batch_size: int = 32,
        learning_rate: float = 0.002,
        validation_split: float = 0.0,
        model_tag: str = "",
        register_model: bool = True,
        patch_target: int = 5,
        num_patch: int = 3,
        num_patch_gen_samples: int = 40,
        patch_learning_rate: float = 0.1,
        patch_lr_decay: float = 0.3,
        patch_loss: str = "auto",
        max_iter: int = 500,
        rotation_max: float = 22.5,
        scale_min: float = 0.3,
        scale_max: float = 0.5,
        patch_scale: float = 0.4,
        patch_location: str = "center",
        patch_deployment_method: str = "corrupt",
        patch_application_rate: float = 1.0,
        seed: int = 0,
        experiment_name: str = "mnist",
    ) -> Artifact:
        track = tracking(experiment_name)
        train_data = load_dataset(source=data_dir, split="train", image_size=image_size, color_mode="grayscale",
                                  seed=seed, **track).set_display_name("load training data")
        test_data = load_dataset(source=data_dir, split="test", image_size=image_size, color_mode="grayscale",
                                 seed=seed, **track).set_display_name("load test data")
        trained = train(
            training_data=train_data.outputs["dataset"], testing_data=test_data.outputs["dataset"],
            model_architecture=model_architecture, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, validation_split=validation_split, model_tag=model_tag,
            register_model=register_model, seed=seed, **track,
        )
        attack = gen_patch(
            data=train_data.outputs["dataset"], model=trained.outputs["model"], model_architecture=model_architecture,
            learning_rate=patch_learning_rate, lr_decay=patch_lr_decay, patch_loss=patch_loss, max_iter=max_iter,
            patch_target=patch_target, num_patch=num_patch,
            num_patch_gen_samples=num_patch_gen_samples, rotation_max=rotation_max, scale_min=scale_min,
            scale_max=scale_max, patch_location=patch_location, seed=seed, **track,
        )
        patched = deploy_patch(
            data=test_data.outputs["dataset"], patches=attack.outputs["patches"],
            patch_deployment_method=patch_deployment_method, patch_application_rate=patch_application_rate,
            patch_scale=patch_scale, rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max,
            patch_location=patch_location, seed=seed, **track,
        ).set_display_name("deploy_patch: test set")
        clean = infer(
            data=test_data.outputs["dataset"], model=trained.outputs["model"], model_architecture=model_architecture,
            label="baseline / clean test", seed=seed, **track,
        ).set_display_name("infer: clean test")
        attacked = infer(
            data=patched.outputs["patched_data"], model=trained.outputs["model"], model_architecture=model_architecture,
            label="baseline / patched test", seed=seed, **track,
        ).set_display_name("infer: patched test")
        summary = report(
            **report_inputs(trained, attack, patched, clean, attacked),
            title="MNIST adversarial patch experiment", **track,
        )
        place_all(placement)
        return summary.outputs["results"]
    return mnist_patch


mnist_patch = build()
"""Built with no placement: for the local runner and for a quick upload."""
