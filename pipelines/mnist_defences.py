"""The MNIST experiment with every defence row measured twice: against the patches made for the
undefended baseline (transferred, as the seed did) and against an adaptive attacker who knows the
defence (Athalye et al. 2018; Tramer et al. 2020).

mnist-experiment's graph, plus, with the baseline attack's budget: for each preprocessing defence,
patches optimized through it in front of the baseline model (straight-through gradients for the
median filter and JPEG, a fresh noise draw per step for Gaussian noise) -> deploy_patch (test set)
-> the defence -> infer, row "<defence> (adaptive)"; and fresh patches against the model trained on
patched data and against the PGD model -> deploy_patch -> infer with that model. Each adaptive row
sits right after its transferred one. Then the certified defences, each with its certified-accuracy
curve (patch sides 1 to 10) in the report: derandomized smoothing, and PatchCleanser around the
baseline without and with masked training. ``make demo-defences`` runs it.
"""

from kfp import dsl

from advpatch.pipelines.common import defence_experiment, place_all


def build(placement=None, eval_shards=1):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.app.placement`), its
    evaluation in ``eval_shards`` shards (see :func:`advpatch.pipelines.common.attack_and_defend`)."""

    @dsl.pipeline(name="advpatch-mnist-defences")
    def mnist_defences(
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
        worst_case_stride: int = 2,
        worst_case_angles: int = 3,
        ablation: str = "cross",
        certified_architecture: str = "conv_net",
        smoothing_learning_rate: float = 0.002,
        certified_lr_decay: float = 1.0,
        masked_training_epochs: int = 300,
        seed: int = 0,
        experiment_name: str = "mnist",
    ):
        """The MNIST patch experiment with adaptive attacks: every defence row (three preprocessing
        defences, training on patched data, PGD adversarial training) against transferred and
        adaptive patches, each evaluated on clean and patched test images; then two certified
        defences (derandomized smoothing, PatchCleanser with and without masked training) with
        their certified accuracy against patches of side 1 to 10.

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
            worst_case_stride: With patch_placement='worst_case': pixels between the patch centres
                tried. Allowed: an integer in [1, 4096].
            worst_case_angles: With patch_placement='worst_case': rotations tried at each position,
                evenly spaced over [-rotation_max, rotation_max] (1: upright only). Allowed: an
                integer in [1, 64].
            ablation: What each view keeps: a band of columns ('column') or rows ('row'), a square
                block ('block'), or both kinds of band ('cross': twice the views; a patch reaches
                twice as many). Allowed: one of 'column', 'row', 'cross', 'block'. Feeds
                derandomized_smoothing's ablation.
            certified_architecture: The network derandomized smoothing trains on its views, and the
                one PatchCleanser's masked training trains from scratch (its
                masked_training_architecture). Allowed: one of 'le_net', 'shallow_net', 'conv_net',
                'alex_net', 'resnet50', 'vgg16'. Feeds derandomized_smoothing's model_architecture.
            smoothing_learning_rate: Adam's learning rate for derandomized smoothing's training.
                Allowed: a number > 0. Feeds derandomized_smoothing's learning_rate.
            certified_lr_decay: Share of both certified defences' training steps, at the end, over
                which the learning rate decays (cosine) to 1%; 0 keeps it constant. Allowed: in [0,
                1]. Feeds derandomized_smoothing's lr_decay.
            masked_training_epochs: PatchCleanser's masked training of a fresh
                certified_architecture network (its second row; the first is the baseline with
                none). Allowed: an integer >= 1.
            seed: Seeds every step: same seed, same results. Allowed: an integer in [0, 2147483647].
            experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        """
        defence_experiment(locals(), "MNIST patch defences: transferred and adaptive attacks", adaptive=True,
                           eval_shards=eval_shards)
        place_all(placement)

    return mnist_defences


mnist_defences = build()
"""Built with no placement: for the local runner and for a quick upload."""
