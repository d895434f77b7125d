"""The MNIST adversarial-patch experiment, short.

load (train, test) -> train LeNet -> gen_patch (on training images) -> deploy_patch (test set,
corrupt) -> infer on clean and on patched test images -> report (one comparison row: baseline).

Runs on the embedded digits by default (``data_dir='digits'``) or on an MNIST laid out as in the
seed demo (``training/`` and ``testing/`` folders of class subfolders of PNGs).

``patch_location`` is used for both generation and deployment. ``center`` (the default here) gives
patches that turn digits into the target class; ``random`` gives patches that work anywhere but
mostly hide strokes (lower accuracy, little targeted success). See README, "Patch attacks".
"""

from kfp import dsl

from advpatch.components import close_run, deploy_patch, gather, gen_patch, infer, merge_evaluations, report, train
from advpatch.pipelines.common import load_splits, place_all, report_inputs, tracking


def build(placement=None, eval_shards=1):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.app.placement`), its
    evaluation in ``eval_shards`` shards (see :func:`advpatch.pipelines.common.attack_and_defend`)."""

    @dsl.pipeline(name="advpatch-mnist-patch")
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
        patch_scale: float = 0.4,
        patch_location: str = "center",
        patch_deployment_method: str = "corrupt",
        patch_application_rate: float = 1.0,
        seed: int = 0,
        experiment_name: str = "mnist",
    ):
        """Train LeNet-5 on MNIST (or the embedded digits), attack it with targeted adversarial
        patches, evaluate on clean and patched test images; one results table.

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
            validation_split: Share of the training images held out for validation. Allowed: in [0,
                1).
            model_tag: Tag in the registered name {experiment}_{model_tag}_{model_architecture}
                (empty: {experiment}_{model_architecture}). Allowed: letters, digits, _ . - (not
                starting with . or -), or empty.
            register_model: Register the model in the MLflow model registry.
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
            patch_scale: Patch side as a share of the image's shorter side; 0 draws a scale per
                image from [scale_min, scale_max]. Allowed: in [0, 1].
            patch_location: 'random' (anywhere the patch's mask fits inside the image) or 'center';
                generation and deployment should use the same (README, 'Patch attacks'). Allowed:
                one of 'random', 'center'.
            patch_deployment_method: 'corrupt' (patched images replace their originals) or 'augment'
                (patched copies are added beside every original). Allowed: one of 'corrupt',
                'augment'.
            patch_application_rate: Share of the images that get a patch (an exact count). Allowed:
                in [0, 1].
            seed: Seeds every step: same seed, same results. Allowed: an integer in [0, 2147483647].
            experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        """
        track = tracking(experiment_name)
        # the exit task runs when the steps are done, whatever happened, and closes the pipeline's MLflow run
        with dsl.ExitHandler(close_run(**track).set_display_name("close the MLflow run")):
            train_data, test_data = load_splits(data_dir, image_size, seed, track)
            trained = train(
                training_data=train_data.outputs["dataset"], testing_data=test_data.outputs["dataset"],
                model_architecture=model_architecture, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                learning_rate=learning_rate, validation_split=validation_split, model_tag=model_tag,
                register_model=register_model, seed=seed, **track,
            )
            placements = dict(rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max,
                              patch_location=patch_location, seed=seed)
            attack = gen_patch(
                data=train_data.outputs["dataset"], model=trained.outputs["model"],
                model_architecture=model_architecture,
                learning_rate=patch_learning_rate, lr_decay=patch_lr_decay, patch_loss=patch_loss, max_iter=max_iter,
                patch_target=patch_target, patch_target_name=patch_target_name,
                num_patch=num_patch, num_patch_gen_samples=num_patch_gen_samples,
                **placements, **track,
            )
            deploy = dict(data=test_data.outputs["dataset"], patches=attack.outputs["patches"],
                          patch_deployment_method=patch_deployment_method,
                          patch_application_rate=patch_application_rate, patch_scale=patch_scale, **placements,
                          **track)

            def evaluate(condition, images, **shard):
                return infer(data=images, model=trained.outputs["model"], model_architecture=model_architecture,
                             row="baseline", condition=condition, seed=seed, **shard, **track,
                             ).set_display_name(f"infer: baseline / {condition}" + (", a shard" if shard else ""))

            if eval_shards == 1:
                patched = deploy_patch(**deploy).set_display_name("deploy_patch: test set")
                evaluations = [evaluate(condition, images) for condition, images in (
                    ("clean", test_data.outputs["dataset"]), ("patched", patched.outputs["patched_data"]))]
            else:  # each shard its own tasks (pods); each evaluation merged exactly as unsharded
                shards = dict(shard_count=eval_shards)
                with dsl.ParallelFor(list(range(eval_shards)), name="eval-shards") as shard:
                    patched = deploy_patch(**deploy, shard_index=shard, **shards).set_display_name(
                        "deploy_patch: test set, a shard")
                    parts = [evaluate("clean", test_data.outputs["dataset"], shard_index=shard, **shards),
                             evaluate("patched", patched.outputs["patched_data"])]
                evaluations = [merge_evaluations(shard_results=dsl.Collected(part.outputs["shard_result"]), **track)
                               .set_display_name(f"merge: baseline / {condition}")
                               for part, condition in zip(parts, ("clean", "patched"))]
                patched = gather(summaries=dsl.Collected(patched.outputs["summary"]), **track).set_display_name(
                    "gather: deploy_patch shards")
            report(**report_inputs(trained, attack, patched, *evaluations),
                   title="MNIST adversarial patch experiment", **track)
        place_all(placement)

    return mnist_patch


mnist_patch = build()
"""Built with no placement: for the local runner and for a quick upload."""
