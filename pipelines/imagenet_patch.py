"""The seed's ImageNet patch experiment: a pretrained model instead of a trained one.

load (an ImageNet validation folder of class sub-folders named by WordNet id or index, with Keras'
``imagenet_class_index.json`` so the labels are the model's 1,000 output indices; its fixed 80/20
split: patches are made on the 80%, evaluated on the 20%) -> init_model (ResNet50 or VGG16 from
Keras' published weights file, evaluated on the test images) -> gen_patch (target by index, 859
'toaster' as in Brown et al., or by name) -> deploy_patch (each test image and a patched copy) ->
baseline, spatial smoothing, JPEG compression and Gaussian noise, each evaluated on the clean and
the patched images -> report.

The weights and class index files are never downloaded: give their local paths or ``s3://`` URIs
(README, "Fruits360 and ImageNet"). ``max_examples`` keeps a random subset of each split (CPU runs).
"""

from kfp import dsl

from advpatch.pipelines.common import model_experiment, place_all


def build(placement=None, eval_shards=1):
    """The pipeline, with ``placement`` applied to every task (see :mod:`advpatch.app.placement`), its
    evaluation in ``eval_shards`` shards (see :func:`advpatch.pipelines.common.attack_and_defend`)."""

    @dsl.pipeline(name="advpatch-imagenet-patch")
    def imagenet_patch(
        data_dir: str = "s3://mlpipeline/shared/datasets/imagenet/val",
        class_index: str = "s3://mlpipeline/shared/models/keras/imagenet_class_index.json",
        weights: str = "s3://mlpipeline/shared/models/keras/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
        model_architecture: str = "resnet50",
        image_size: int = 224,
        max_examples: int = 0,
        batch_size: int = 16,
        patch_target: int = 859,
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
        experiment_name: str = "imagenet",
    ):
        """The seed's ImageNet patch experiment on a pretrained ResNet50 or VGG16: a baseline and
        three preprocessing defences, each evaluated on clean and patched test images.

        Args:
            data_dir: ImageNet's validation images: a folder (or s3://BUCKET/PREFIX) of class
                sub-folders named by WordNet id (n01440764) or index. Allowed: 'digits', a folder,
                an .npz file, s3://BUCKET/PREFIX or mlflow-run://RUN_ID/TAR_NAME. Feeds
                load_dataset's source.
            class_index: Keras' imagenet_class_index.json (a local path or s3://BUCKET/KEY): the
                1,000 classes in the weights' order. Never downloaded. Allowed: a local path or
                s3://BUCKET/KEY.
            weights: Keras' ImageNet weights file for model_architecture, with its top (a local path
                or s3://BUCKET/KEY). Never downloaded. Allowed: a local path or s3://BUCKET/KEY, or
                empty.
            model_architecture: 'resnet50' or 'vgg16' (give its weights file). Allowed: one of
                'resnet50', 'vgg16'.
            image_size: Images are resized to this size: 224, what the weights take. Allowed: an
                integer in [0, 4096].
            max_examples: Keep a random subset of this many images of each split (drawn from seed);
                0 keeps all. Allowed: an integer >= 0.
            batch_size: Images per forward pass (init_model, infer) and per patch optimization step
                (gen_patch): 16, as ART's ImageNet notebook (a batch's activations, not the data,
                set the memory a step needs). Allowed: an integer >= 1.
            patch_target: Target class index (859: 'toaster', as in Brown et al.); -1 draws a random
                target per patch. Allowed: an integer >= -1.
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
        from advpatch.components import init_model

        def pretrained(test_data, track):
            return init_model(testing_data=test_data.outputs["dataset"], model_architecture=model_architecture,
                              weights=weights, model_tag="pretrained", batch_size=batch_size, seed=seed, **track)

        model_experiment(locals(), pretrained, "ImageNet adversarial patch experiment", "rgb", class_index,
                         eval_shards)
        place_all(placement)

    return imagenet_patch


imagenet_patch = build()
"""Built with no placement: for the local runner and for a quick upload."""
