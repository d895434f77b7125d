"""The full MNIST experiment of the seed's notebook, as one pipeline, with one comparison table.

load (train, test) -> baseline LeNet -> gen_patch (3 patches, target 5, 40 generation images)
-> deploy_patch (training set: augment; test set: each image and a patched copy of it)
-> for every row, one task evaluates the clean and the patched test images separately:
   baseline | spatial smoothing | JPEG compression | Gaussian noise (preprocessing defences on the
   test images, then infer) | trained on patched data (the augmented training set) | PGD
   adversarial training (the two trainings evaluate their models on the test images themselves)
-> report: clean accuracy, accuracy on patched images and targeted success, row by row.

The defences see the test images as prediction data (``data_role="predict"``), so each applies
with its default ``apply_predict=True``. Every defence row faces the patches made for the baseline
model (a transferred, non-adaptive attacker), as in the seed.
"""

from kfp import dsl

from advpatch.pipelines.common import defence_experiment, place_all


def build(placement=None, eval_shards=1):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.app.placement`), its
    evaluation in ``eval_shards`` shards (see :func:`advpatch.pipelines.common.attack_and_defend`)."""

    @dsl.pipeline(name="advpatch-mnist-experiment")
    def mnist_experiment(
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
        patch_scale: float = 0.4,
        patch_location: str = "center",
        train_patch_application_rate: float = 1.0,
        spatial_smoothing_window_size: int = 3,
        jpeg_compression_quality: int = 50,
        gaussian_augmentation_sigma: float = 0.1,
        feature_squeezing_bit_depth: int = 4,
        pgd_eps: float = 0.1,
        pgd_eps_step: float = 0.025,
        pgd_max_iter: int = 10,
        seed: int = 0,
        experiment_name: str = "mnist",
    ):
        """The seed's MNIST patch experiment: a baseline, three preprocessing defences, training on
        patched data and PGD adversarial training, each evaluated on clean and patched test images.

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
            patch_scale: Patch side as a share of the image's shorter side; 0 draws a scale per
                image from [scale_min, scale_max]. Allowed: in [0, 1].
            patch_location: 'random' (anywhere the patch's mask fits inside the image) or 'center';
                generation and deployment should use the same (README, 'Patch attacks'). Allowed:
                one of 'random', 'center'.
            train_patch_application_rate: Share of the training images that get a patched copy (the
                training set is augmented). Allowed: in [0, 1]. Feeds deploy_patch's
                patch_application_rate.
            spatial_smoothing_window_size: Side of the median filter's window. Allowed: an integer
                in [1, 64].
            jpeg_compression_quality: JPEG quality, 1 (worst) to 100 (best); 95 or lower is advised.
                Allowed: an integer in [1, 100].
            gaussian_augmentation_sigma: Standard deviation of the noise on [0, 1] pixels. Allowed:
                a number > 0.
            feature_squeezing_bit_depth: Bits per pixel value kept: 2**bit_depth levels in [0, 1]
                (1: binarized images). Allowed: an integer in [1, 64].
            pgd_eps: PGD's L-inf radius on [0, 1] pixels; also the radius of the test accuracy under
                PGD. Allowed: in (0, 1].
            pgd_eps_step: PGD's step size on [0, 1] pixels. Allowed: in (0, 1].
            pgd_max_iter: PGD iterations. Allowed: an integer >= 1.
            seed: Seeds every step: same seed, same results. Allowed: an integer in [0, 2147483647].
            experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        """
        defence_experiment(locals(), "MNIST adversarial patch experiment: defences", eval_shards=eval_shards)
        place_all(placement)

    return mnist_experiment


mnist_experiment = build()
"""Built with no placement: for the local runner and for a quick upload."""
