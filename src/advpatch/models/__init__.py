"""Models: architectures (:mod:`.architectures`), the Model artifact (:mod:`.artifact`), pretrained
and users' own models (:mod:`.pretrained`), a ``.keras`` file read without Keras
(:mod:`.keras_file`), seeded training (:mod:`.training`) and the classifier attacks and evaluation
see, a model with input transforms in front (:mod:`.classifier`).

The first three make the package's face: ``from advpatch import models; models.load_model(path)``.
"""

from advpatch.errors import ModelError
from advpatch.models.architectures import (
                                           LOGITS_LAYER,
                                           MIN_IMAGE_SIZE,
                                           build_model,
                                           check_buildable,
                                           make_optimizer,
                                           preprocessing_layer,
)
from advpatch.models.artifact import (
                                           FORMAT,
                                           KERAS_FILE,
                                           META_FILE,
                                           PREPROCESSING,
                                           VERSION,
                                           ModelInfo,
                                           check_choice,
                                           check_fits,
                                           load_keras,
                                           load_model,
                                           precheck,
                                           read_model_info,
                                           resolve,
                                           save_model,
)
from advpatch.models.pretrained import (
                                           CUSTOM,
                                           IMAGENET_MODE,
                                           IMAGENET_SHAPE,
                                           IMAGENET_WEIGHTS,
                                           PREPROCESSING_TEXT,
                                           check_weights,
                                           pretrained_model,
                                           user_model,
)

__all__ = ["CUSTOM", "FORMAT", "IMAGENET_MODE", "IMAGENET_SHAPE", "IMAGENET_WEIGHTS", "KERAS_FILE", "LOGITS_LAYER",
           "META_FILE", "MIN_IMAGE_SIZE", "PREPROCESSING", "PREPROCESSING_TEXT", "VERSION", "ModelError", "ModelInfo",
           "build_model", "check_buildable", "check_choice", "check_fits", "check_weights", "load_keras", "load_model",
           "make_optimizer", "precheck", "preprocessing_layer", "pretrained_model", "read_model_info", "resolve",
           "save_model", "user_model"]
