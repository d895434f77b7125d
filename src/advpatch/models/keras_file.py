"""A user's ``.keras`` file read without Keras: the checks a run makes before any task (and before
TensorFlow is imported). A Keras 3 ``.keras`` file is a zip archive holding ``config.json`` (the
model's layers, as JSON) and its weights; nothing in it is executed here."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from advpatch.errors import ModelError


def check_model_file(path: os.PathLike[str] | str) -> Optional[Tuple[Optional[int], ...]]:
    """Refuse a ``path`` that is not a readable ``.keras`` archive; return the model's input shape
    (height, width, channels; ``None`` where any size goes) when its config says, else ``None``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model_file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"model_file {path} is not a Keras 3 .keras archive (a zip; for a SavedModel or .h5 "
                             "model, load it in Keras and save it with model.save('model.keras'))")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json").decode("utf-8"))
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, RecursionError) as e:
        raise ModelError(f"model_file {path} is not a Keras 3 .keras archive: no readable config.json "
                             f"({type(e).__name__})") from None
    shape = _input_shape(config)
    return tuple(None if d is None else int(d) for d in shape[1:]) if shape and len(shape) == 4 else None


def _input_shape(node: Any, depth: int = 0) -> Optional[List[Any]]:
    """The first input shape a Keras config names (an InputLayer's ``batch_shape``, or a model's
    ``build_config``), searched depth-first."""
    if depth > 50:
        return None
    if isinstance(node, dict):
        for key in ("batch_shape", "batch_input_shape"):
            value = node.get(key)
            if isinstance(value, list):
                return value
        build = node.get("build_config")
        if isinstance(build, dict):
            shape = build.get("input_shape")
            if isinstance(shape, list):
                return shape
        children: List[Any] = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _input_shape(child, depth + 1)
        if found is not None:
            return found
    return None


def make_reproducible(path: os.PathLike[str] | str) -> None:
    """Rewrite a ``.keras`` archive Keras just saved without what differs from one save of the same
    model to the next: the save time (``metadata.json``'s ``date_saved``, the weights member's zip
    date) and memory addresses (``config.json``'s ``shared_object_id``, an object's ``id()``,
    renumbered in order of appearance: objects that shared one still share one). The same weights
    are then the same bytes (same seed, same bytes, for model artifacts too)."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumbered(json.loads(data), {})).encode()
            archive.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=info.compress_type)


def _renumbered(node: Any, ids: Dict[Any, int]) -> Any:
    if isinstance(node, dict):
        return {k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else _renumbered(v, ids)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_renumbered(v, ids) for v in node]
    return node


def fits(shape: Optional[Tuple[Optional[int], ...]], image_shape: Sequence[int]) -> bool:
    """Whether a model taking ``shape`` takes images of ``image_shape`` (unknown sizes fit)."""
    return shape is None or (len(shape) == 3 and all(s in (None, d) for s, d in zip(shape, image_shape)))
