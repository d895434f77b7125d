"""The patch experiment on a user's own model.

load (any class-folder dataset, a folder or ``s3://``, at the model's image size and channels,
with ``class_index`` naming the classes in the model's output order; without split folders, its
fixed 80/20 split: patches are made on the 80%, evaluated on the 20%) -> import_model (the user's
``.keras`` file, checked against the data, its preprocessing put inside) -> gen_patch ->
deploy_patch (each test image and a patched copy) -> baseline, spatial smoothing, JPEG
compression and Gaussian noise, each evaluated on the clean and the patched images -> report.
"""

from kfp import dsl

from advpatch.pipelines.common import model_experiment, place_all


def build(placement=None, eval_shards=1):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.app.placement`), its
    evaluation in ``eval_shards`` shards (see :func:`advpatch.pipelines.common.attack_and_defend`)."""

    @dsl.pipeline(name="advpatch-custom-model-patch")
    def custom_model_patch(
        data_dir: str = "s3://mlpipeline/shared/datasets/mydata",
        class_index: str = "",
        model_file: str = "s3://mlpipeline/shared/models/model.keras",
        preprocessing: str = "none",
        image_size: int = 0,
        color_mode: str = "rgb",
        max_examples: int = 0,
        model_tag: str = "",
        batch_size: int = 32,
        patch_target: int = 0,
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
        patch_location: str = "random",
        spatial_smoothing_window_size: int = 3,
        jpeg_compression_quality: int = 50,
        gaussian_augmentation_sigma: float = 0.1,
        feature_squeezing_bit_depth: int = 4,
        seed: int = 0,
        experiment_name: str = "custom",
    ):
        """The patch experiment on your own Keras model: a baseline and three preprocessing
        defences, each evaluated on clean and patched test images.

        Args:
            data_dir: The data: a folder (or s3://BUCKET/PREFIX) of class sub-folders, or with
                training/ and testing/ folders of them; as load_dataset's source. Allowed: 'digits',
                a folder, an .npz file, s3://BUCKET/PREFIX or mlflow-run://RUN_ID/TAR_NAME. Feeds
                load_dataset's source.
            class_index: The classes in the model's output order: one name per line, or Keras'
                imagenet_class_index.json (a local path or s3://BUCKET/KEY); empty: the sorted
                sub-folder names. Allowed: a local path or s3://BUCKET/KEY, or empty.
            model_file: A Keras model file (.keras), a local path or s3://BUCKET/KEY: its output is
                one probability or logit per class of the data (required). Allowed: a local path or
                s3://BUCKET/KEY.
            preprocessing: What the model does to its input before its own layers, in pixel space
                [0, 1]: 'none' (the model takes [0, 1]), 'scale_255' (it takes [0, 255], e.g.
                EfficientNet or a model with its own Rescaling layer), or Keras' ImageNet modes
                'caffe' (ResNet50, VGG16), 'tf' (MobileNet, Inception: [-1, 1]) or 'torch'
                (DenseNet: mean and std). Allowed: one of 'none', 'scale_255', 'caffe', 'tf',
                'torch'.
            image_size: Images are resized to this size, the model's input size; 0 keeps theirs.
                Allowed: an integer in [0, 4096].
            color_mode: 'auto' keeps the source's channels; 'grayscale' or 'rgb' converts. Allowed:
                one of 'auto', 'grayscale', 'rgb'.
            max_examples: Keep a random subset of this many images (drawn from seed); 0 keeps all.
                Allowed: an integer >= 0.
            model_tag: Tag in the registered name {experiment}_{model_tag}_{model_architecture}
                (empty: {experiment}_{model_architecture}). Allowed: letters, digits, _ . - (not
                starting with . or -), or empty.
            batch_size: Images per forward pass (import_model, infer) and per patch optimization
                step (gen_patch); lower it for a large model. Allowed: an integer >= 1.
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
            spatial_smoothing_window_size: Side of the median filter's window. Allowed: an integer
                in [1, 64].
            jpeg_compression_quality: JPEG quality, 1 (worst) to 100 (best); 95 or lower is advised.
                Allowed: an integer in [1, 100].
            gaussian_augmentation_sigma: Standard deviation of the noise on [0, 1] pixels. Allowed:
                a number > 0.
            feature_squeezing_bit_depth: Bits per pixel value kept: 2**bit_depth levels in [0, 1]
                (1: binarized images). Allowed: an integer in [1, 64].
            seed: Seeds every step: same seed, same results. Allowed: an integer in [0, 2147483647].
            experiment_name: MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'.
        """
        from advpatch.components import import_model

        def imported(test_data, track):
            return import_model(testing_data=test_data.outputs["dataset"], model_file=model_file,
                                preprocessing=preprocessing, model_tag=model_tag, batch_size=batch_size, seed=seed,
                                **track)

        model_experiment(locals(), imported, "Adversarial patch experiment on your model", color_mode, class_index,
                         eval_shards)
        place_all(placement)

    return custom_model_patch


custom_model_patch = build()
"""Built with no placement: for the local runner and for a quick upload."""
