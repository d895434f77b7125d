"""The full MNIST experiment of the seed's notebook, as one pipeline, with one comparison table.

load (train, test) -> baseline LeNet -> gen_patch (3 patches, target 5, 40 generation images)
-> deploy_patch (training set: augment; test set: corrupt)
-> for every row, infer on clean and on patched test images:
   baseline | spatial smoothing | JPEG compression | Gaussian noise (preprocessing defences on the
   test images) | trained on patched data (the augmented training set) | PGD adversarial training
-> report: clean accuracy, accuracy on patched images and targeted success, row by row.

The defences see the test images as prediction data (``data_role="predict"``), so each applies
with its default ``apply_predict=True``.
"""

from kfp import dsl
from kfp.dsl import Artifact

from advpatch.components import (deploy_patch, gaussian_augmentation, gen_patch, infer, jpeg_compression,
                                 load_dataset, report, spatial_smoothing, train)
from advpatch.pipelines.common import place_all, report_inputs, tracking
from advpatch.pipelines.placement import LOCAL, Placement


def build(placement: Placement = LOCAL):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.pipelines.placement`)."""

    @dsl.pipeline(
        name="advpatch-mnist-experiment",
        description="The seed's MNIST patch experiment: baseline, three preprocessing defences, training on "
                    "patched data and PGD adversarial training, each on clean and patched test images.",
    )
    def mnist_experiment(
        data_dir: str = "digits",
        image_size: int = 28,
        model_architecture: str = "le_net",
        optimizer: str = "adam",
        epochs: float = 15.0,
        batch_size: int = 32,
        learning_rate: float = 0.002,
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
        train_patch_application_rate: float = 1.0,
        spatial_smoothing_window_size: int = 3,
        jpeg_compression_quality: int = 50,
        gaussian_augmentation_sigma: float = 0.1,
        pgd_eps: float = 0.1,
        pgd_eps_step: float = 0.025,
        pgd_max_iter: int = 10,
        seed: int = 0,
        experiment_name: str = "mnist",
    ) -> Artifact:
        track = tracking(experiment_name)
        train_data = load_dataset(source=data_dir, split="train", image_size=image_size, color_mode="grayscale",
                                  seed=seed, **track).set_display_name("load training data")
        test_data = load_dataset(source=data_dir, split="test", image_size=image_size, color_mode="grayscale",
                                 seed=seed, **track).set_display_name("load test data")
        fit = dict(model_architecture=model_architecture, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                   learning_rate=learning_rate, pgd_eps=pgd_eps, pgd_eps_step=pgd_eps_step, pgd_max_iter=pgd_max_iter,
                   seed=seed)
        baseline = train(training_data=train_data.outputs["dataset"], testing_data=test_data.outputs["dataset"],
                         model_tag="baseline", register_model=True, **fit, **track).set_display_name("train: baseline")
        attack = gen_patch(
            data=train_data.outputs["dataset"], model=baseline.outputs["model"], model_architecture=model_architecture,
            learning_rate=patch_learning_rate, lr_decay=patch_lr_decay, patch_loss=patch_loss, max_iter=max_iter,
            patch_target=patch_target, num_patch=num_patch,
            num_patch_gen_samples=num_patch_gen_samples, rotation_max=rotation_max, scale_min=scale_min,
            scale_max=scale_max, patch_location=patch_location, seed=seed, **track,
        )
        where = dict(patch_scale=patch_scale, rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max,
                         patch_location=patch_location, seed=seed)
        patched_train = deploy_patch(
            data=train_data.outputs["dataset"], patches=attack.outputs["patches"], patch_deployment_method="augment",
            patch_application_rate=train_patch_application_rate, output_tar_name="adv_training.tar", **where, **track,
        ).set_display_name("deploy_patch: training set (augment)")
        patched_test = deploy_patch(
            data=test_data.outputs["dataset"], patches=attack.outputs["patches"], patch_deployment_method="corrupt",
            patch_application_rate=1.0, **where, **track,
        ).set_display_name("deploy_patch: test set (corrupt)")
        clean_images, patched_images = test_data.outputs["dataset"], patched_test.outputs["patched_data"]

        def evaluate(model_task, row, clean, patched):
            a = infer(data=clean, model=model_task.outputs["model"], label=f"{row} / clean", seed=seed,
                      **track).set_display_name(f"infer: {row} / clean")
            b = infer(data=patched, model=model_task.outputs["model"], label=f"{row} / patched", seed=seed,
                      **track).set_display_name(f"infer: {row} / patched")
            return [a, b]

        rows = evaluate(baseline, "baseline", clean_images, patched_images)
        for name, component, settings in (
            ("spatial smoothing", spatial_smoothing, {"spatial_smoothing_window_size": spatial_smoothing_window_size}),
            ("JPEG compression", jpeg_compression, {"jpeg_compression_quality": jpeg_compression_quality}),
            ("Gaussian noise", gaussian_augmentation, {"gaussian_augmentation_sigma": gaussian_augmentation_sigma}),
        ):
            on_clean = component(data=clean_images, data_role="predict", seed=seed, **settings,
                                 **track).set_display_name(f"{name}: clean test")
            on_patched = component(data=patched_images, data_role="predict", seed=seed, **settings,
                                   **track).set_display_name(f"{name}: patched test")
            rows += evaluate(baseline, name, on_clean.outputs["defended_data"], on_patched.outputs["defended_data"])
        on_patched_data = train(training_data=patched_train.outputs["patched_data"],
                                testing_data=test_data.outputs["dataset"], model_tag="patched", register_model=True,
                                **fit, **track).set_display_name("train: on patched data")
        rows += evaluate(on_patched_data, "trained on patched data", clean_images, patched_images)
        adversarial = train(training_data=train_data.outputs["dataset"], testing_data=test_data.outputs["dataset"],
                            model_tag="pgd", register_model=True, apply_defense=True, **fit,
                            **track).set_display_name("train: PGD adversarial training")
        rows += evaluate(adversarial, "PGD adversarial training", clean_images, patched_images)
        summary = report(
            **report_inputs(baseline, attack, patched_train, patched_test, on_patched_data, adversarial, *rows),
            title="MNIST adversarial patch experiment: defences", **track,
        )
        place_all(placement)
        return summary.outputs["results"]
    return mnist_experiment


mnist_experiment = build()
"""Built with no placement: for the local runner and for a quick upload."""
