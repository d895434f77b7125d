"""How the patch's effect grows with its size: one pipeline run sweeps the deployment scale.

load (train, test) -> baseline LeNet -> gen_patch (trained on scales scale_min..scale_max)
-> for each scale in ``patch_scales``, in a ``dsl.ParallelFor``: deploy_patch (each test image and
   a patched copy at that scale) -> infer (baseline) and JPEG compression -> infer (the defence)
-> gather (``dsl.Collected``: the loop's results, one list per infer) -> report: one table and one
   curve of accuracy on patched images and targeted success against scale, the defended model
   beside the baseline, with clean accuracy for reference.

KFP lets a loop's outputs out only as a whole list (``dsl.Collected``), and a component input
cannot mix such a list with single artifacts: ``gather`` turns each list into one file that the
report takes in a slot like any step's summary.
"""

from kfp import dsl

from advpatch.components import close_run, deploy_patch, gather, gen_patch, infer, jpeg_compression, report, train
from advpatch.pipelines.common import load_splits, place_all, report_inputs, tracking


def build(placement=None):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.app.placement`)."""

    @dsl.pipeline(name="advpatch-mnist-sweep")
    def mnist_sweep(
        data_dir: str = "digits",
        image_size: int = 28,
        model_architecture: str = "le_net",
        optimizer: str = "adam",
        epochs: float = 15.0,
        batch_size: int = 32,
        learning_rate: float = 0.002,
        patch_target: int = 5,
        patch_target_name: str = "",
        num_patch: int = 3,
        num_patch_gen_samples: int = 40,
        patch_learning_rate: float = 0.1,
        patch_lr_decay: float = 0.3,
        patch_loss: str = "auto",
        max_iter: int = 500,
        rotation_max: float = 22.5,
        scale_min: float = 0.3,
        scale_max: float = 0.5,
        patch_location: str = "center",
        patch_scales: list = [0.2, 0.3, 0.4, 0.5, 0.6],
        jpeg_compression_quality: int = 50,
        seed: int = 0,
        experiment_name: str = "mnist",
    ):
        """Deployment scale against accuracy on patched images and targeted success, for the
        baseline model and with JPEG compression, in one run (a ParallelFor over the scales).

        Args:
            data_dir: The data, as load_dataset's source: 'digits' (embedded), a folder with
                training/ and testing/, an .npz file, s3://BUCKET/PREFIX or
                mlflow-run://RUN_ID/TAR_NAME. Allowed: 'digits', a folder, an .npz file,
                s3://BUCKET/PREFIX or mlflow-run://RUN_ID/TAR_NAME. Feeds load_dataset's source.
            image_size: Images are resized to this size (LeNet: 28). Allowed: an integer in [0,
                4096].
            model_architecture: The network: 'le_net', 'shallow_net', 'conv_net', 'alex_net',
                'resnet50' or 'vgg16'. Allowed: one of 'le_net', 'shallow_net', 'conv_net',
                'alex_net', 'resnet50', 'vgg16'.
            optimizer: 'rmsprop', 'adam', 'adagrad' or 'sgd'. Allowed: one of 'rmsprop', 'adam',
                'adagrad', 'sgd'.
            epochs: Passes over the training data; may be fractional. Allowed: a number > 0.
            batch_size: Images per batch. Allowed: an integer >= 1.
            learning_rate: The optimizer's initial learning rate. Allowed: a number > 0.
            patch_target: Target class index; -1 draws a random target per patch. Allowed: an
                integer >= -1.
            patch_target_name: Target class by name (a class of the data, e.g. 'toaster'); when
                given, it is used instead of patch_target.
            num_patch: Number of patches, each with its own target and generation images. Allowed:
                an integer in [1, 1000].
            num_patch_gen_samples: Generation images per patch, drawn among images not of its
                target. Allowed: an integer >= 1.
            patch_learning_rate: gen_patch's learning_rate: Adam step size on patch pixels. Allowed:
                a number > 0. Feeds gen_patch's learning_rate.
            patch_lr_decay: Share of the steps, at the end, over which the learning rate decays
                (cosine) to 1%; 0 keeps it constant, as ART does. Allowed: in [0, 1]. Feeds
                gen_patch's lr_decay.
            patch_loss: 'cross_entropy' (Brown et al., ART), 'success' (-log of the mean target
                probability), 'combined' (their sum) or 'auto' ('success' at the centre, else
                'combined'). Allowed: one of 'auto', 'combined', 'cross_entropy', 'success'.
            max_iter: Passes over the generation images, as ART counts iterations. Allowed: an
                integer >= 1.
            rotation_max: Random rotation in [-rotation_max, rotation_max] degrees. Allowed: in [0,
                180].
            scale_min: Smallest patch side, as a share of the image's shorter side. Allowed: in (0,
                1).
            scale_max: Largest patch side, as a share of the image's shorter side; above scale_min.
                Allowed: in (0, 1].
            patch_location: 'random' (anywhere the patch's mask fits inside the image) or 'center';
                generation and deployment should use the same (README, 'Patch attacks'). Allowed:
                one of 'random', 'center'.
            patch_scales: Patch scales to deploy the patches at, one ParallelFor iteration each (a
                share of the image's shorter side; 0 draws a scale per image). Allowed: a non-empty
                list of distinct numbers, each in [0, 1]. Feeds deploy_patch's patch_scale.
            jpeg_compression_quality: JPEG quality, 1 (worst) to 100 (best); 95 or lower is advised.
                Allowed: an integer in [1, 100].
            seed: Seeds every step: same seed, same results. Allowed: an integer in [0, 2147483647].
            experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        """
        track = tracking(experiment_name)
        with dsl.ExitHandler(close_run(**track).set_display_name("close the MLflow run")):
            train_data, test_data = load_splits(data_dir, image_size, seed, track)
            baseline = train(
                training_data=train_data.outputs["dataset"], testing_data=test_data.outputs["dataset"],
                model_architecture=model_architecture, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                learning_rate=learning_rate, register_model=False, model_tag="baseline", seed=seed, **track,
            ).set_display_name("train: baseline")
            placements = dict(rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max,
                              patch_location=patch_location, seed=seed)
            attack = gen_patch(
                data=train_data.outputs["dataset"], model=baseline.outputs["model"],
                model_architecture=model_architecture,
                learning_rate=patch_learning_rate, lr_decay=patch_lr_decay, patch_loss=patch_loss, max_iter=max_iter,
                patch_target=patch_target, patch_target_name=patch_target_name,
                num_patch=num_patch, num_patch_gen_samples=num_patch_gen_samples,
                **placements, **track,
            )
            with dsl.ParallelFor(patch_scales, name="scales") as scale:
                pairs = deploy_patch(
                    data=test_data.outputs["dataset"], patches=attack.outputs["patches"],
                    patch_deployment_method="augment", patch_application_rate=1.0, patch_scale=scale, **placements,
                    **track,
                ).set_display_name("deploy_patch: test set at this scale").outputs["patched_data"]
                plain = infer(data=pairs, model=baseline.outputs["model"], row="baseline", condition="split", seed=seed,
                              **track).set_display_name("infer: baseline")
                jpeg = jpeg_compression(data=pairs, data_role="predict",
                                        jpeg_compression_quality=jpeg_compression_quality,
                                        seed=seed, **track).set_display_name("JPEG compression: test set")
                defended = infer(data=jpeg.outputs["defended_data"], model=baseline.outputs["model"],
                                 row="JPEG compression", condition="split", seed=seed,
                                 **track).set_display_name("infer: JPEG compression")
            rows = [gather(summaries=dsl.Collected(task.outputs["summary"]),
                           **track).set_display_name(f"gather: {name}")
                    for name, task in (("baseline", plain), ("JPEG compression", defended))]
            report(**report_inputs(baseline, attack, *rows), title="MNIST patch: deployment scale sweep", **track)
        place_all(placement)

    return mnist_sweep


mnist_sweep = build()
"""Built with no placement: for the local runner and for a quick upload."""
