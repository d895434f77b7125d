"""The one table of parameters: every parameter of every step and pipeline, with its type, default,
allowed values and description.

:data:`PARAMS` defines each parameter once. :data:`STEP_PARAMS` says which parameters each step takes,
where a step's default or description differs from the common one. :mod:`advpatch.params.pipelines`
does the same for the pipelines (``of=`` names the step parameter a pipeline parameter feeds).
Validation, the components' signatures and docstrings, their READMEs and the pipelines' signatures
come from here (``make generate`` writes them; ``make test`` fails while they are stale).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

from advpatch.params.rules import Choices, Interval, Param, Pattern, Relation, Rule, table

ARCHITECTURES = ("le_net", "shallow_net", "conv_net", "alex_net", "resnet50", "vgg16")
"""Model architectures ``train`` builds and ``infer`` and ``gen_patch`` accept."""
PRETRAINED = ("resnet50", "vgg16")
"""Architectures ``init_model`` makes from Keras' published ImageNet weights."""
PREPROCESSING_MODES = ("none", "scale_255", "caffe", "tf", "torch")
"""What a model does to its [0, 1] input first: nothing, x 255, or one of Keras' ImageNet modes ('caffe':
BGR minus the ImageNet mean on [0, 255]; 'tf': [-1, 1]; 'torch': ImageNet mean and std on [0, 1])."""
OPTIMIZERS = ("rmsprop", "adam", "adagrad", "sgd")
SPLITS = ("train", "test", "all")
COLOR_MODES = ("auto", "grayscale", "rgb")
PATCH_LOCATIONS = ("random", "center")
"""Where a patch goes: anywhere its mask fits wholly inside the image, or the image centre."""
PATCH_SHAPES = ("square", "circle")
PATCH_LOSSES = ("auto", "combined", "cross_entropy", "success")
PATCH_CONDITIONINGS = ("none", "canvas", "grid")
"""What a patch set is: one patch for every placement ('none'), or what deploy_patch pastes is a fixed
function of the placement it draws (an image-sized 'canvas', or a 'grid' of patches by cell)."""
PATCH_PLACEMENTS = ("random", "worst_case")
"""Where deploy_patch puts each patch: drawn at random, or the placement worst for the model."""
DEPLOYMENT_METHODS = ("corrupt", "augment")
DATA_ROLES = ("fit", "predict")
"""What a dataset is used for: training (ART's apply_fit) or prediction (apply_predict)."""
CONDITIONS = ("auto", "clean", "patched", "split")
"""What an evaluation's images are; ``auto``: ``patched`` when the data carries patched images."""
ABLATIONS = ("column", "row", "cross", "block")
"""What a derandomized-smoothing view keeps: a band of columns or rows, either band ('cross'), or a block."""

PREPROCESSING_DEFENCES: Dict[str, Tuple[str, ...]] = {
    "spatial_smoothing": ("spatial_smoothing_window_size", "spatial_smoothing_apply_fit",
                          "spatial_smoothing_apply_predict"),
    "jpeg_compression": ("jpeg_compression_quality", "jpeg_compression_channels_first", "jpeg_compression_apply_fit",
                         "jpeg_compression_apply_predict"),
    "gaussian_augmentation": ("gaussian_augmentation_sigma", "gaussian_augmentation_perform_data_augmentation",
                              "gaussian_augmentation_ratio", "gaussian_augmentation_apply_fit",
                              "gaussian_augmentation_apply_predict"),
    "feature_squeezing": ("feature_squeezing_bit_depth", "feature_squeezing_apply_fit",
                          "feature_squeezing_apply_predict"),
}
"""Each preprocessing defence (:mod:`advpatch.defences`) and its own parameters, defined in
:data:`PARAMS`: the first is the one pipelines set and adaptive attacks take (``gen_patch``'s
``defence`` knobs). A defence's step takes these and the ones every defence step has."""
DEFENCE_CHOICES = ("none", *PREPROCESSING_DEFENCES)

POSITIVE_INT = Interval(1, integer=True)
NON_NEGATIVE_INT = Interval(0, integer=True)
UNIT = Interval(0.0, 1.0)
POSITIVE = Interval(0.0, low_open=True)
TAR_NAME = Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar", "a plain file name ending in .tar")
FOLDER_NAME = Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", "a plain folder name (letters, digits, _ . -)")
NAME = Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", "letters, digits, _ . - (not starting with . or -)")
SOURCE = Pattern(r"\S.*", "'digits', a folder, an .npz file, s3://BUCKET/PREFIX or mlflow-run://RUN_ID/TAR_NAME")
FILE = Pattern(r"\S+", "a local path or s3://BUCKET/KEY")
MODEL_URI = Pattern(r"(models:/[^/\s]+/[^/\s]+|runs:/[^/\s]+/\S+)", "'models:/NAME/VERSION' or 'runs:/RUN_ID/PATH'")


def _p(name: str, kind: type, default: Any, doc: str, rule: Optional[Rule] = None, **kw: Any) -> Param:
    return Param(name, kind, default, doc, rule, **kw)


PARAMS: Dict[str, Param] = {p.name: p for p in (
    # ---- shared
    _p("seed", int, 0, "Seeds every random choice of the step: same seed, same bytes.",
       Interval(0, 2**31 - 1, integer=True)),
    _p("batch_size", int, 32, "Images per batch.", POSITIVE_INT),
    _p("memory_budget_mb", int, 128, "Memory (MiB) a batch may take: batch_size is capped to the images that fit "
       "(estimated from the image size and, for a model, its layers' outputs), so the peak stays within the pod's "
       "memory whatever batch_size asks. Results do not depend on it (deploy_patch's 'augment' is not capped: it "
       "writes each batch's patched copies after its originals).", POSITIVE_INT),
    _p("model_architecture", str, "le_net", "The network: 'le_net', 'shallow_net', 'conv_net', 'alex_net', 'resnet50' "
       "or 'vgg16'.", Choices(ARCHITECTURES)),
    _p("model_uri", str, "", "A registered MLflow model ('models:/NAME/VERSION') to use instead of a Model artifact.",
       MODEL_URI, optional=True),
    _p("output_tar_name", str, "", "Also log the output to this step's MLflow run as this tar file, for reuse by "
       "later runs (load_dataset's mlflow-run:// source); empty: do not log.", TAR_NAME, optional=True),
    # ---- load_dataset
    _p("source", str, "digits", "'digits' (the embedded MNIST-framed digits), a folder (training/ and testing/, class "
       "sub-folders of images, MNIST IDX files, or a dataset a step wrote), an .npz file, s3://BUCKET/PREFIX or "
       "mlflow-run://RUN_ID/TAR_NAME[#FOLDER].", SOURCE),
    _p("split", str, "train", "Which split to read where the source has several: 'train', 'test' or 'all'.",
       Choices(SPLITS)),
    _p("image_size", int, 0, "Resize images to image_size x image_size pixels; 0 keeps their size.",
       Interval(0, 4096, integer=True)),
    _p("color_mode", str, "auto", "'auto' keeps the source's channels; 'grayscale' or 'rgb' converts.",
       Choices(COLOR_MODES)),
    _p("max_examples", int, 0, "Keep a random subset of this many images (drawn from seed); 0 keeps all.",
       NON_NEGATIVE_INT),
    _p("class_index", str, "", "A class-folder source's classes, in a model's output order: a file in Keras' "
       "imagenet_class_index.json format or one class name per line (a local path or s3://BUCKET/KEY); each "
       "sub-folder names one class by WordNet id, name or index. Empty: the sub-folders are the classes.",
       FILE, optional=True),
    # ---- init_model, import_model
    _p("weights", str, "", "Keras' ImageNet weights file for the architecture, with its top (e.g. "
       "resnet50_weights_tf_dim_ordering_tf_kernels.h5), as a local path or s3://BUCKET/KEY; empty: Keras' own "
       "download (where a network allows it).", FILE, optional=True),
    _p("model_file", str, "", "A Keras model file (.keras), a local path or s3://BUCKET/KEY: its output is one "
       "probability or logit per class of the data (required).", FILE, optional=True),
    _p("preprocessing", str, "none", "What the model does to its input before its own layers, in pixel space "
       "[0, 1]: 'none' (the model takes [0, 1]), 'scale_255' (it takes [0, 255], e.g. EfficientNet or a model with "
       "its own Rescaling layer), or Keras' ImageNet modes 'caffe' (ResNet50, VGG16), 'tf' (MobileNet, Inception: "
       "[-1, 1]) or 'torch' (DenseNet: mean and std).", Choices(PREPROCESSING_MODES)),
    # ---- train
    _p("optimizer", str, "adam", "'rmsprop', 'adam', 'adagrad' or 'sgd'.", Choices(OPTIMIZERS)),
    _p("epochs", float, 10.0, "Passes over the training data; may be fractional.", POSITIVE),
    _p("learning_rate", float, 0.001, "The optimizer's initial learning rate.", POSITIVE),
    _p("validation_split", float, 0.0, "Share of the training images held out for validation.",
       Interval(0.0, 1.0, high_open=True)),
    _p("model_tag", str, "", "Tag in the registered name {experiment}_{model_tag}_{model_architecture} "
       "(empty: {experiment}_{model_architecture}).", NAME, optional=True),
    _p("register_model", bool, False, "Register the model in the MLflow model registry."),
    _p("apply_defense", bool, False, "PGD adversarial training (Madry et al.) instead of plain training."),
    _p("pgd_eps", float, 0.1, "PGD's L-inf radius on [0, 1] pixels; also the radius of the test accuracy under PGD.",
       Interval(0.0, 1.0, low_open=True)),
    _p("pgd_eps_step", float, 0.025, "PGD's step size on [0, 1] pixels.", Interval(0.0, 1.0, low_open=True)),
    _p("pgd_max_iter", int, 10, "PGD iterations.", POSITIVE_INT),
    _p("pgd_ratio", float, 0.5, "Share of each batch replaced by its PGD examples.", Interval(0.0, 1.0, low_open=True)),
    # ---- infer
    _p("row", str, "", "Row of the comparison table this evaluation belongs to (e.g. 'baseline', 'JPEG "
       "compression'); empty: the model's architecture."),
    _p("condition", str, "auto", "What the images are: 'clean', 'patched', 'auto' (patched when the data "
       "carries patched images) or 'split' (clean images and patched copies of them, as deploy_patch's "
       "'augment' writes: two evaluations, one of each).", Choices(CONDITIONS)),
    # ---- gen_patch
    _p("max_iter", int, 500, "Passes over the generation images, as ART counts iterations.", POSITIVE_INT),
    _p("patch_target", int, -1, "Target class index; -1 draws a random target per patch.", Interval(-1, integer=True)),
    _p("defence", str, "none", "A preprocessing defence in front of the model while the patch is optimized (an "
       "adaptive attacker): a defence's name (straight-through gradients through a filter, a fresh draw per step "
       "for noise: expectation over transformation), or 'none'.", Choices(DEFENCE_CHOICES)),
    _p("patch_target_name", str, "", "Target class by name (a class of the data, e.g. 'toaster'); when given, "
       "it is used instead of patch_target."),
    _p("num_patch", int, 1, "Number of patches, each with its own target and generation images.",
       Interval(1, 1000, integer=True)),
    _p("num_patch_gen_samples", int, 40, "Generation images per patch, drawn among images not of its target.",
       POSITIVE_INT),
    _p("rotation_max", float, 22.5, "Random rotation in [-rotation_max, rotation_max] degrees.",
       Interval(0.0, 180.0)),
    _p("scale_min", float, 0.1, "Smallest patch side, as a share of the image's shorter side.",
       Interval(0.0, 1.0, low_open=True, high_open=True)),
    _p("scale_max", float, 1.0, "Largest patch side, as a share of the image's shorter side; above scale_min.",
       Interval(0.0, 1.0, low_open=True)),
    _p("patch_location", str, "random", "'random' (anywhere the patch's mask fits inside the image) or 'center'; "
       "generation and deployment should use the same (README, 'Patch attacks').", Choices(PATCH_LOCATIONS)),
    _p("patch_shape", str, "square", "'square' or 'circle'.", Choices(PATCH_SHAPES)),
    _p("patch_size", int, 0, "Patch resolution in pixels; 0: the image's shorter side.",
       Interval(0, 4096, integer=True)),
    _p("lr_decay", float, 0.3, "Share of the steps, at the end, over which the learning rate decays (cosine) to 1%; "
       "0 keeps it constant, as ART does.", UNIT),
    _p("patch_loss", str, "auto", "'cross_entropy' (Brown et al., ART), 'success' (-log of the mean target "
       "probability), 'combined' (their sum) or 'auto' ('success' at the centre, else 'combined').",
       Choices(PATCH_LOSSES)),
    _p("patch_conditioning", str, "none", "'none': universal patches, one for every placement. 'canvas' or 'grid': "
       "a placement-conditioned set (deploy_patch pastes a fixed function of the placement it draws): 'canvas' is "
       "one image-sized canvas aligned with the image, each placement showing it through the patch's mask; 'grid' "
       "is patch_grid_size^2 patches, one per cell of the patch centre's position. Much stronger at random "
       "placement, but a threat model of data corruption through deploy_patch, not of a sticker printed once: the "
       "patch depends on where it lands. 'canvas' needs square images and is image-sized (patch_size 0).",
       Choices(PATCH_CONDITIONINGS)),
    _p("patch_grid_size", int, 7, "With patch_conditioning='grid': cells per side of the grid (patch_grid_size^2 "
       "patches); unused otherwise.", Interval(1, 64, integer=True)),
    # ---- deploy_patch
    _p("patch_placement", str, "random", "'random': each patch at a placement drawn at random. 'worst_case': per "
       "image, the attacker picks the position (every worst_case_stride pixels over the positions patch_location "
       "allows) and rotation (worst_case_angles of them) against the model (and the defence, if any) that makes it "
       "say the target, surest first; else the one that lowers the true class's probability most. The scale stays "
       "patch_scale. Needs the model.", Choices(PATCH_PLACEMENTS)),
    _p("worst_case_stride", int, 2, "With patch_placement='worst_case': pixels between the patch centres tried.",
       Interval(1, 4096, integer=True)),
    _p("worst_case_angles", int, 3, "With patch_placement='worst_case': rotations tried at each position, evenly "
       "spaced over [-rotation_max, rotation_max] (1: upright only).", Interval(1, 64, integer=True)),
    _p("patch_deployment_method", str, "corrupt", "'corrupt' (patched images replace their originals) or 'augment' "
       "(patched copies are added beside every original).", Choices(DEPLOYMENT_METHODS)),
    _p("patch_application_rate", float, 1.0, "Share of the images that get a patch (an exact count).", UNIT),
    _p("patch_scale", float, 0.4, "Patch side as a share of the image's shorter side; 0 draws a scale per image "
       "from [scale_min, scale_max].", UNIT),
    _p("output_dataset_name", str, "adversarial_patched_data", "The folder inside output_tar_name.", FOLDER_NAME),
    # ---- defences
    _p("data_role", str, "predict", "What the input is used for: 'fit' (training) or 'predict'. The defence applies "
       "when its apply_fit or apply_predict flag for that role is set; otherwise the data passes unchanged.",
       Choices(DATA_ROLES)),
    _p("spatial_smoothing_window_size", int, 3, "Side of the median filter's window.", Interval(1, 64, integer=True)),
    _p("spatial_smoothing_apply_fit", bool, False, "Apply to training data."),
    _p("spatial_smoothing_apply_predict", bool, True, "Apply to data used for prediction."),
    _p("jpeg_compression_quality", int, 50, "JPEG quality, 1 (worst) to 100 (best); 95 or lower is advised.",
       Interval(1, 100, integer=True)),
    _p("jpeg_compression_channels_first", bool, False, "The seed's layout flag: compress in NCHW layout "
       "(transposed there and back; the same images, as advpatch data is channels-last)."),
    _p("jpeg_compression_apply_fit", bool, False, "Apply to training data."),
    _p("jpeg_compression_apply_predict", bool, True, "Apply to data used for prediction."),
    _p("gaussian_augmentation_perform_data_augmentation", bool, False, "Keep the originals and add noisy copies "
       "(training data only: needs apply_fit and not apply_predict)."),
    _p("gaussian_augmentation_ratio", float, 1.0, "With augmentation, noisy copies to add per image.", UNIT),
    _p("gaussian_augmentation_sigma", float, 0.1, "Standard deviation of the noise on [0, 1] pixels.", POSITIVE),
    _p("gaussian_augmentation_apply_fit", bool, False, "Apply to training data."),
    _p("gaussian_augmentation_apply_predict", bool, True, "Apply to data used for prediction."),
    _p("feature_squeezing_bit_depth", int, 4, "Bits per pixel value kept: 2**bit_depth levels in [0, 1] (1: "
       "binarized images).", Interval(1, 64, integer=True)),
    _p("feature_squeezing_apply_fit", bool, False, "Apply to training data."),
    _p("feature_squeezing_apply_predict", bool, True, "Apply to data used for prediction."),
    # ---- derandomized_smoothing
    _p("ablation", str, "column", "What each view keeps: a band of columns ('column') or rows ('row'), a square block "
       "('block'), or both kinds of band ('cross': twice the views; a patch reaches twice as many).",
       Choices(ABLATIONS)),
    _p("ablation_size", int, 2, "Width of the kept bands (or side of the kept block), in pixels.",
       Interval(1, 4096, integer=True)),
    _p("vote_threshold", float, 0.2, "A view votes for every class whose probability reaches this (0: one vote, "
       "for its most probable class); a view that sees nothing then votes for none.", Interval(0.0, 1.0,
                                                                                             high_open=True)),
    _p("certify_patch_sizes", list, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "Sides of the square patches to certify "
       "against, in pixels.", Interval(1, 4096, integer=True)),
    # ---- patch_cleanser
    _p("mask_patch_size", int, 5, "Side of the largest square patch the defended classifier's mask set is made for, "
       "in pixels (its predictions; each of certify_patch_sizes gets its own mask set).",
       Interval(1, 4096, integer=True)),
    _p("masks_per_side", int, 6, "Masks along each side of the image: masks_per_side^2 masks (the paper's 6: 36).",
       Interval(1, 4096, integer=True)),
    _p("masked_training_epochs", int, 0, "Passes of masked training over the training images before masking (two "
       "masks of the set on each image); 0: the model as given.", NON_NEGATIVE_INT),
    _p("masked_training_architecture", str, "", "Masked training trains a fresh network of this architecture (as "
       "model_architecture) from scratch, and it is defended: the given model then only fixes the classes and the "
       "image shape (needs masked_training_epochs > 0). Empty: masked training fine-tunes the given model.",
       Choices(ARCHITECTURES), optional=True),
    # ---- evaluation shards (deploy_patch, infer)
    _p("shard_index", int, 0, "Which shard of the images to process, of shard_count (contiguous, in order): the "
       "same bytes and predictions per image as unsharded, for merge_evaluations to merge.", NON_NEGATIVE_INT),
    _p("shard_count", int, 1, "Shards the images are split into (a pipeline's eval_shards); 1: all the images.",
       Interval(1, 4096, integer=True)),
    _p("eval_shards", int, 1, "Evaluation shards (a build option of the pipelines: advpatch run and compile "
       "--eval-shards): the test set's deploy_patch, each defence and infer run per shard, each shard its own "
       "task (pod), in a ParallelFor, and merge_evaluations gives each row's evaluation exactly as unsharded; 1: "
       "no shards.",
       Interval(1, 4096, integer=True)),
    # ---- report
    _p("title", str, "advpatch results", "Heading of the report and its results table."),
    # ---- pipelines
    _p("data_dir", str, "digits", "The data, as load_dataset's source: 'digits' (embedded), a folder with training/ "
       "and testing/, an .npz file, s3://BUCKET/PREFIX or mlflow-run://RUN_ID/TAR_NAME.",
       SOURCE, of="load_dataset.source"),
    _p("experiment_name", str, "", "MLflow experiment; empty: $ADVPATCH_EXPERIMENT or 'advpatch'."),
)}

TRACKING: Tuple[Param, ...] = (
    PARAMS["experiment_name"],
    _p("task_name", str, "", "KFP task name (dsl.PIPELINE_TASK_NAME_PLACEHOLDER): names the step's MLflow run."),
)
"""Parameters every component takes to name its MLflow run. The pipeline run a task belongs to
comes from its environment (:mod:`advpatch.settings`), not from a task input: an input that
differs between runs would keep KFP's cache from ever reusing a task's outputs."""

RELATIONS: Tuple[Relation, ...] = (
    Relation(("masked_training_architecture", "masked_training_epochs"), lambda fresh, epochs: not fresh or epochs > 0,
             "masked_training_architecture={masked_training_architecture!r} trains a fresh network, so it needs "
             "masked_training_epochs > 0, got {masked_training_epochs}"),
    Relation(("shard_index", "shard_count"), lambda index, count: index < count,
             "shard_index must be smaller than shard_count, got shard_index={shard_index} and "
             "shard_count={shard_count}"),
    Relation(("scale_min", "scale_max"), lambda lo, hi: lo < hi,
             "scale_min must be smaller than scale_max, got scale_min={scale_min} and scale_max={scale_max}"),
    Relation(("patch_placement", "defence"), lambda placement, defence: placement == "worst_case" or defence == "none",
             "defence={defence!r} is what the worst-case search attacks: it needs patch_placement='worst_case', got "
             "patch_placement={patch_placement!r}"),
    Relation(("gaussian_augmentation_perform_data_augmentation", "gaussian_augmentation_apply_fit",
              "gaussian_augmentation_apply_predict"),
             lambda augment, fit, predict: not augment or (fit and not predict),
             "gaussian_augmentation_perform_data_augmentation=True adds training images, so it needs "
             "gaussian_augmentation_apply_fit=True and gaussian_augmentation_apply_predict=False, got "
             "apply_fit={gaussian_augmentation_apply_fit} and apply_predict={gaussian_augmentation_apply_predict}"),
)
"""Rules between parameters, checked wherever all of a rule's parameters are given together."""


def _t(*items: Union[str, Param]) -> Tuple[Param, ...]:
    return table(*items, base=PARAMS)


P = PARAMS
_DEFENCE = ("data_role", P["batch_size"].but(default=256), "output_tar_name", "seed")
_ATTACKED_DEFENCE = ("defence", *(own[0] for own in PREPROCESSING_DEFENCES.values()))
_MODEL_CHOICE = ("model_uri", P["model_architecture"].but(
    default="", optional=True, doc="Optional check: the model's architecture must be this one."))
_SHARD = ("shard_index", "shard_count")
_PLACEMENT = ("rotation_max", "scale_min", "scale_max", "patch_location")
_TRAIN_DECAY = P["lr_decay"].but(default=0.0, doc="Share of the training steps, at the end, over which the learning "
                                                  "rate decays (cosine) to 1%; 0 keeps it constant.")

STEP_PARAMS: Dict[str, Tuple[Param, ...]] = {
    "load_dataset": _t("source", "split", "image_size", "color_mode", "max_examples", "class_index",
                       P["seed"].but(doc="Seeds the max_examples subset.")),
    "train": _t(
        "model_architecture", "optimizer", "epochs", P["batch_size"].but(doc="Images per training step."),
        "learning_rate", "validation_split", "model_tag", "register_model", "apply_defense", "pgd_eps",
        "pgd_eps_step",
        "pgd_max_iter", "pgd_ratio",
        P["row"].but(doc="Row of the comparison table for the evaluations of testing_data when it holds clean "
                         "images and patched copies of them (deploy_patch augment); empty: the model_tag, else the "
                         "architecture."),
        P["seed"].but(doc="Seeds the weights, the shuffling and the validation split: same seed, same weights.")),
    "init_model": _t(
        P["model_architecture"].but(default="resnet50", doc="'resnet50' or 'vgg16': the Keras application.",
                                    rule=Choices(PRETRAINED)),
        "weights", "model_tag", P["register_model"].but(default=True),
        P["batch_size"].but(default=64, doc="Images per forward pass of the evaluation."),
        P["row"].but(doc="Row of the comparison table for the evaluation on the test data; empty: the model_tag, "
                         "else the architecture."),
        P["seed"].but(doc="Seeds TensorFlow (the weights are given, the evaluation is deterministic).")),
    "import_model": _t(
        "model_file", "preprocessing", "model_tag", P["register_model"].but(default=True),
        P["batch_size"].but(default=64, doc="Images per forward pass of the evaluation."),
        P["row"].but(doc="Row of the comparison table for the evaluation on the test data; empty: the model_tag, "
                         "else 'custom'."),
        P["seed"].but(doc="Seeds TensorFlow (the evaluation is deterministic).")),
    "infer": _t(*_MODEL_CHOICE, P["batch_size"].but(default=256, doc="Images per forward pass."), "memory_budget_mb",
                "row", "condition",
                P["seed"].but(doc="Seeds TensorFlow (inference itself is deterministic)."), *_SHARD),
    "gen_patch": _t(
        *_MODEL_CHOICE,
        P["learning_rate"].but(default=0.1, doc="Adam step size on patch pixels in [0, 1]; the rate of the first "
                                                 "steps."),
        "max_iter", "patch_target", "patch_target_name", "num_patch", "num_patch_gen_samples", *_PLACEMENT,
        "patch_shape", "patch_size",
        P["batch_size"].but(default=40, doc="Generation images per optimization step."), "lr_decay", "patch_loss",
        "patch_conditioning", "patch_grid_size", *_ATTACKED_DEFENCE,
        P["seed"].but(doc="Seeds targets, generation images and placements: same seed, same patch bytes.")),
    "deploy_patch": _t(
        "patch_deployment_method", "patch_application_rate", "patch_scale",
        P["batch_size"].but(default=256, doc="Images per batch with patch_placement='worst_case' (the patched images "
                                             "the search scores at a time) or 'augment' (each batch's copies follow "
                                             "its originals); otherwise deploy_patch patches as many images at a "
                                             "time as memory_budget_mb holds (no byte depends on it)."),
        "memory_budget_mb", *_PLACEMENT,
        P["output_tar_name"].but(default="adv_testing.tar"), "output_dataset_name", "patch_placement",
        "worst_case_stride", "worst_case_angles",
        P["model_uri"].but(doc="With patch_placement='worst_case': a registered MLflow model ('models:/NAME/VERSION') "
                               "to search against instead of the model input."), _MODEL_CHOICE[1],
        P["defence"].but(doc="With patch_placement='worst_case': a preprocessing defence in front of the model the "
                             "search runs against (as gen_patch's, so the placement is the worst case for the "
                             "defended classifier); 'none'."), *_ATTACKED_DEFENCE[1:],
        P["seed"].but(doc="Seeds which images get which patch where: same seed, same patched bytes."), *_SHARD),
    "derandomized_smoothing": _t(
        "ablation", "ablation_size", "vote_threshold", "certify_patch_sizes", "model_architecture",
        P["epochs"].but(type=int, default=300, rule=POSITIVE_INT,
                        doc="Passes over the training images, each image at a fresh view each pass."),
        P["batch_size"].but(default=128), P["learning_rate"].but(default=0.004), _TRAIN_DECAY,
        P["row"].but(doc="Row of the comparison table; empty: 'derandomized smoothing (<ablation> <size>)'."),
        P["seed"].but(doc="Seeds the weights and the views: same seed, same certificates.")),
    "patch_cleanser": _t(
        "mask_patch_size", "masks_per_side", "certify_patch_sizes", "masked_training_epochs",
        "masked_training_architecture",
        P["batch_size"].but(default=64, doc="Images per masked-training step."),
        P["learning_rate"].but(default=0.001, doc="Adam's learning rate for masked training."), _TRAIN_DECAY,
        P["row"].but(doc="Row of the comparison table; empty: 'PatchCleanser (masked training)' or "
                         "'PatchCleanser (no masked training)'."),
        P["seed"].but(doc="Seeds masked training's masks and order: same seed, same certificates.")),
    "report": _t("title"),
    "close_run": (),
    "gather": (),
    "merge_evaluations": (),
    "collect": (),
    # each preprocessing defence's step: its own parameters, then those every defence step has
    **{name: _t(*own, *_DEFENCE[:-1], P["seed"].but(doc="Seeds the defence's random draws (if any): same seed, "
                                                          "same bytes."))
       for name, own in PREPROCESSING_DEFENCES.items()},
}
"""Each step's parameters, in the order its component declares them."""
