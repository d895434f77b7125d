"""Each pipeline's parameters: :data:`PIPELINE_PARAMS`, drawn from the one table
(:mod:`advpatch.params.table`), where a pipeline's default or description differs from the step's
(``of=`` names the step parameter a pipeline parameter feeds). The pipelines' signatures and
docstrings are generated from here (``make generate``)."""

from __future__ import annotations

from typing import Dict, Tuple, Union

from advpatch.params.rules import Choices, Param, table
from advpatch.params.table import PARAMS, POSITIVE_INT, PREPROCESSING_DEFENCES, PRETRAINED

P = PARAMS

_PIPE_TRAIN = ("image_size", "model_architecture", "optimizer", "epochs", "batch_size", "learning_rate")
_PIPE_ATTACK = (
    "patch_target", "patch_target_name", "num_patch", "num_patch_gen_samples",
    P["learning_rate"].but(name="patch_learning_rate", of="gen_patch.learning_rate", default=0.1,
                           doc="gen_patch's learning_rate: Adam step size on patch pixels."),
    P["lr_decay"].but(name="patch_lr_decay", of="gen_patch.lr_decay"), "patch_loss", "max_iter", "rotation_max",
    P["scale_min"].but(default=0.3), P["scale_max"].but(default=0.5), "patch_scale",
    P["patch_location"].but(default="center"),
)
_PIPE_COMMON = dict(image_size=P["image_size"].but(default=28, doc="Images are resized to this size (LeNet: 28)."),
                    epochs=P["epochs"].but(default=15.0), learning_rate=P["learning_rate"].but(default=0.002),
                    patch_target=P["patch_target"].but(default=5), num_patch=P["num_patch"].but(default=3),
                    seed=P["seed"].but(doc="Seeds every step: same seed, same results."),
                    experiment_name=P["experiment_name"].but(default="mnist"))


_TRAIN_PATCHED = P["patch_application_rate"].but(
    name="train_patch_application_rate", of="deploy_patch.patch_application_rate",
    doc="Share of the training images that get a patched copy (the training set is augmented).")
_PIPE_DEFENCES = tuple(own[0] for own in PREPROCESSING_DEFENCES.values())


_PIPE_CERTIFIED = (
    P["ablation"].but(default="cross", of="derandomized_smoothing.ablation"),
    P["model_architecture"].but(
        name="certified_architecture", default="conv_net", of="derandomized_smoothing.model_architecture",
        doc="The network derandomized smoothing trains on its views, and the one PatchCleanser's masked training "
            "trains from scratch (its masked_training_architecture)."),
    P["learning_rate"].but(name="smoothing_learning_rate", default=0.002, of="derandomized_smoothing.learning_rate",
                           doc="Adam's learning rate for derandomized smoothing's training."),
    P["lr_decay"].but(name="certified_lr_decay", default=1.0, of="derandomized_smoothing.lr_decay",
                      doc="Share of both certified defences' training steps, at the end, over which the learning "
                          "rate decays (cosine) to 1%; 0 keeps it constant."),
    P["masked_training_epochs"].but(
        default=300, rule=POSITIVE_INT,
        doc="PatchCleanser's masked training of a fresh certified_architecture network (its second row; the first "
            "is the baseline with none)."),
)
"""mnist-defences' certified rows, with the settings that met issue 23's targets in make bench."""


def _pipe(*items: Union[str, Param]) -> Tuple[Param, ...]:
    return table(*[_PIPE_COMMON.get(i, i) if isinstance(i, str) else i for i in items], base=PARAMS)


PIPELINE_PARAMS: Dict[str, Tuple[Param, ...]] = {
    "mnist-patch": _pipe(
        "data_dir", *_PIPE_TRAIN, "validation_split", "model_tag", P["register_model"].but(default=True),
        *_PIPE_ATTACK, "patch_deployment_method", "patch_application_rate", "seed", "experiment_name"),
    "mnist-experiment": _pipe(
        "data_dir", *_PIPE_TRAIN, *_PIPE_ATTACK, _TRAIN_PATCHED, *_PIPE_DEFENCES, "pgd_eps", "pgd_eps_step",
        "pgd_max_iter", "seed", "experiment_name"),
    "mnist-defences": _pipe(
        "data_dir", *_PIPE_TRAIN, *_PIPE_ATTACK, _TRAIN_PATCHED, *_PIPE_DEFENCES, "pgd_eps", "pgd_eps_step",
        "pgd_max_iter", "worst_case_stride", "worst_case_angles", *_PIPE_CERTIFIED, "seed", "experiment_name"),
    "fruits360-experiment": _pipe(
        P["data_dir"].but(default="s3://mlpipeline/shared/datasets/fruits-360",
                          doc="Fruits360 as Kaggle lays it out (Training/ and Test/ folders of class sub-folders of "
                              "100x100 JPEGs): a folder or s3://BUCKET/PREFIX."),
        P["image_size"].but(default=224, doc="Images are resized to this size (the seed notebook: VGG16 at 224; "
                                             "100 keeps Fruits360's own size)."),
        P["model_architecture"].but(default="vgg16"), "optimizer", P["epochs"].but(default=10.0), "batch_size",
        P["learning_rate"].but(default=0.0001), *_PIPE_ATTACK[:-1], P["patch_location"].but(default="random"),
        _TRAIN_PATCHED, *_PIPE_DEFENCES, P["pgd_eps"].but(default=0.03), P["pgd_eps_step"].but(default=0.01),
        P["pgd_max_iter"].but(default=7), "seed", P["experiment_name"].but(default="fruits360")),
    "imagenet-patch": _pipe(
        P["data_dir"].but(default="s3://mlpipeline/shared/datasets/imagenet/val",
                          doc="ImageNet's validation images: a folder (or s3://BUCKET/PREFIX) of class sub-folders "
                              "named by WordNet id (n01440764) or index."),
        P["class_index"].but(default="s3://mlpipeline/shared/models/keras/imagenet_class_index.json", optional=False,
                             doc="Keras' imagenet_class_index.json (a local path or s3://BUCKET/KEY): the 1,000 "
                                 "classes in the weights' order. Never downloaded."),
        P["weights"].but(default="s3://mlpipeline/shared/models/keras/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                         doc="Keras' ImageNet weights file for model_architecture, with its top (a local path or "
                             "s3://BUCKET/KEY). Never downloaded."),
        P["model_architecture"].but(default="resnet50", doc="'resnet50' or 'vgg16' (give its weights file).",
                                    rule=Choices(PRETRAINED)),
        P["image_size"].but(default=224, doc="Images are resized to this size: 224, what the weights take."),
        P["max_examples"].but(doc="Keep a random subset of this many images of each split (drawn from seed); "
                                  "0 keeps all."),
        P["batch_size"].but(default=16, doc="Images per forward pass (init_model, infer) and per patch optimization "
                                            "step (gen_patch): 16, as ART's ImageNet notebook (a batch's "
                                            "activations, not the data, set the memory a step needs)."),
        P["patch_target"].but(default=859, doc="Target class index (859: 'toaster', as in Brown et al.); -1 draws a "
                                               "random target per patch."),
        *[i for i in _PIPE_ATTACK if i != "patch_target"][:-1],
        P["patch_location"].but(default="random"), *_PIPE_DEFENCES, "seed",
        P["experiment_name"].but(default="imagenet")),
    "custom-model-patch": _pipe(
        P["data_dir"].but(default="s3://mlpipeline/shared/datasets/mydata",
                          doc="The data: a folder (or s3://BUCKET/PREFIX) of class sub-folders, or with training/ "
                              "and testing/ folders of them; as load_dataset's source."),
        P["class_index"].but(doc="The classes in the model's output order: one name per line, or Keras' "
                                 "imagenet_class_index.json (a local path or s3://BUCKET/KEY); empty: the sorted "
                                 "sub-folder names."),
        P["model_file"].but(default="s3://mlpipeline/shared/models/model.keras", optional=False), "preprocessing",
        P["image_size"].but(default=0,
                            doc="Images are resized to this size, the model's input size; 0 keeps theirs."),
        P["color_mode"].but(default="rgb"), "max_examples",
        "model_tag", P["batch_size"].but(default=32, doc="Images per forward pass (import_model, infer) and per patch "
                                                        "optimization step (gen_patch); lower it for a large model."),
        P["patch_target"].but(default=0),
        *[i for i in _PIPE_ATTACK if i != "patch_target"][:-1], P["patch_location"].but(default="random"),
        *_PIPE_DEFENCES, "seed", P["experiment_name"].but(default="custom")),
    "mnist-sweep": _pipe(
        "data_dir", *_PIPE_TRAIN, *[i for i in _PIPE_ATTACK if i != "patch_scale"],
        P["patch_scale"].but(name="patch_scales", type=list, default=[0.2, 0.3, 0.4, 0.5, 0.6],
                             doc="Patch scales to deploy the patches at, one ParallelFor iteration each (a share "
                                 "of the image's shorter side; 0 draws a scale per image).",
                             of="deploy_patch.patch_scale"),
        "jpeg_compression_quality", "seed", "experiment_name"),
}
"""Each pipeline's parameters, in the order its function declares them."""
