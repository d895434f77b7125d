"""The Model artifact: a trained or imported model with what it is.

Every advpatch model takes float32 images in ``[0, 1]`` (``[batch, H, W, C]``) and returns class
probabilities. Anything an architecture needs beyond that (ImageNet mean subtraction for
pretrained weights) lives inside the model, so attacks, defences and inference never need to know.

Model artifact layout (format ``advpatch-model``, version 1)::

    <model>/
      model.keras     Keras 3 archive (loaded with safe_mode=True: no Python lambdas)
      model.json      architecture, input_shape, class_names, preprocessing, provenance
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from advpatch import params
from advpatch.errors import ModelError
from advpatch.io.files import atomic_dir, read_manifest
from advpatch.models.architectures import LOGITS_LAYER, preprocessing_layer
from advpatch.models.keras_file import make_reproducible

FORMAT = "advpatch-model"
VERSION = 1
KERAS_FILE = "model.keras"
META_FILE = "model.json"
PREPROCESSING = "float32 in [0, 1]"


@dataclass
class ModelInfo:
    """What ``model.json`` says about a model."""

    architecture: str
    input_shape: Tuple[int, int, int]
    class_names: List[str]
    preprocessing: str = PREPROCESSING
    provenance: Dict[str, Any] = field(default_factory=dict)
    logits_layer: Optional[str] = LOGITS_LAYER
    """The layer giving the logits before the final softmax (attacks optimize on logits), or
    ``None`` when the model exposes only probabilities."""
    defence: Dict[str, Any] = field(default_factory=dict)
    """A certified defence's model: ``{"name", "settings", "image_shape"}``, the certified defence
    whose classifier the model stands for (:func:`advpatch.defences.base.defended_classifier`: what
    ``infer`` runs), its settings by their parameter-table names, and the images that classifier
    takes (the model's own input may differ: smoothing's views carry a mask channel). Empty for a
    plain model (and then not written)."""

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        if not self.defence:
            del data["defence"]
        return {"format": FORMAT, "version": VERSION, **data}

    def image_shape(self) -> Tuple[int, ...]:
        """The images its classifier takes: a certified defence's, else the model's input."""
        return tuple(int(d) for d in self.defence["image_shape"]) if self.defence else tuple(self.input_shape)

    @classmethod
    def from_json(cls, data: Dict[str, Any], where: str) -> "ModelInfo":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ModelError(f"{where} is not an {FORMAT} v{VERSION} manifest")
        info = cls(
            architecture=str(data["architecture"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),  # type: ignore[arg-type]
            class_names=[str(c) for c in data["class_names"]],
            preprocessing=str(data.get("preprocessing", PREPROCESSING)),
            provenance=dict(data.get("provenance", {})),
            logits_layer=data.get("logits_layer", LOGITS_LAYER),
            defence=data.get("defence", {}),
        )
        defence = info.defence
        if not isinstance(defence, dict) or (defence and (
                set(defence) != {"name", "settings", "image_shape"} or not isinstance(defence["name"], str)
                or not isinstance(defence["settings"], dict) or not isinstance(defence["image_shape"], list)
                or len(defence["image_shape"]) != 3 or not all(isinstance(d, int) for d in defence["image_shape"]))):
            raise ModelError(f"{where}: defence {defence!r} is not a certified defence's record "
                             "(name, settings, image_shape)")
        if len(info.input_shape) != 3 or min(info.input_shape) < 1 or not info.class_names \
                or not isinstance(info.logits_layer, (str, type(None))):
            raise ModelError(f"{where}: input_shape {list(info.input_shape)}, {len(info.class_names)} classes or "
                             f"logits_layer {info.logits_layer!r} is not usable")
        return info

    def shape_text(self) -> str:
        return "x".join(map(str, self.input_shape))


def save_model(model: Any, info: ModelInfo, path: os.PathLike[str] | str) -> None:
    """Write the Model artifact folder atomically (a temporary folder renamed into place); the
    same weights give the same bytes (:func:`advpatch.models.keras_file.make_reproducible`)."""
    with atomic_dir(path) as tmp:
        model.save(tmp / KERAS_FILE)
        make_reproducible(tmp / KERAS_FILE)
        (tmp / META_FILE).write_text(json.dumps(info.to_json(), indent=1))


def read_model_info(path: os.PathLike[str] | str) -> ModelInfo:
    """The metadata alone: cheap, no TensorFlow import."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        raise ModelError(f"{path} is not a model artifact: {META_FILE} is missing")
    return read_manifest(meta, ModelError, "model manifest", lambda data: ModelInfo.from_json(data, str(meta)))


def load_keras(path: os.PathLike[str] | str) -> Any:
    """A ``.keras`` file, loaded with ``safe_mode=True`` (no Python lambdas, no pickle)."""
    import keras

    preprocessing_layer()  # advpatch's own layers, registered before Keras looks them up
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError) as e:
        raise ModelError(f"cannot load {path} as a Keras model: {e}") from None


def load_model(path: os.PathLike[str] | str) -> Tuple[Any, ModelInfo]:
    """(keras model, ModelInfo) from a Model artifact folder."""
    info = read_model_info(path)
    return load_keras(Path(path) / KERAS_FILE), info


def check_choice(model_path: str, model_uri: str) -> None:
    """Exactly one model: a Model artifact or a registered one (cheap: before any heavy import)."""
    if bool(model_path) == bool(model_uri):
        raise params.ParameterError(
            "give exactly one model: a Model artifact or model_uri (models:/NAME/VERSION), "
            f"got {'both' if model_path else 'neither'}")


def check_fits(info: ModelInfo, image_shape: Sequence[int], num_classes: int, model_architecture: str = "",
               defended: bool = False) -> None:
    """The model against the data (and the architecture a user expects), naming both sides.
    ``defended``: the caller runs a certified defence's model as that defence's classifier
    (``infer``); elsewhere such a model is refused."""
    if model_architecture and model_architecture != info.architecture:
        raise ModelError(f"model_architecture is {model_architecture!r} but the model is a {info.architecture!r}")
    if info.defence and not defended:
        raise ModelError(f"the model is the base of certified defence {info.defence['name']!r}: only infer runs it "
                         "(as that defence's classifier); give the model it defends here")
    if info.image_shape() != tuple(image_shape):
        shape = "x".join(map(str, info.image_shape()))
        raise ModelError(
            f"the model takes {shape} images but the dataset has {'x'.join(map(str, image_shape))}: "
            "load the data with the model's image_size and color_mode")
    if len(info.class_names) != num_classes:
        raise ModelError(f"the model has {len(info.class_names)} classes but the dataset has {num_classes}")


def precheck(model_path: str, model_uri: str, image_shape: Sequence[int], num_classes: int,
             model_architecture: str = "", defended: bool = False) -> None:
    """What can be known about the model before TensorFlow is imported: exactly one is given, and a
    Model artifact's metadata fits the data (``defended``: see :func:`check_fits`)."""
    check_choice(model_path, model_uri)
    if model_path:
        check_fits(read_model_info(model_path), image_shape, num_classes, model_architecture, defended)


def resolve(model_path: str, model_uri: str, image_shape: Sequence[int], num_classes: int,
            model_architecture: str = "", defended: bool = False) -> Tuple[Any, ModelInfo]:
    """(keras model, ModelInfo) from a Model artifact folder or a registered MLflow model, checked
    against the data (:func:`precheck` first, so an artifact that does not fit is never loaded)."""
    precheck(model_path, model_uri, image_shape, num_classes, model_architecture, defended)
    if model_path:
        return load_model(model_path)
    import tempfile

    from advpatch.tracking.registry import download_registered_model

    with tempfile.TemporaryDirectory() as tmp:
        keras_file, meta = download_registered_model(model_uri, tmp)
        info = ModelInfo.from_json(meta, model_uri)
        check_fits(info, image_shape, num_classes, model_architecture, defended)
        return load_keras(keras_file), info
