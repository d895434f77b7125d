"""Turn a data source into a Dataset artifact (see :mod:`advpatch.data.dataset`).

Sources, by what ``source`` names:

``digits``
    The embedded default: scikit-learn's 1,797 handwritten digits (8x8), framed the way MNIST
    frames its digits (upsampled into the central 20x20 of a 28x28 grayscale image) with a fixed,
    stratified 80/20 train/test split that does not depend on ``seed``.
a folder with ``training/`` and ``testing/`` (or ``train/`` and ``test/``)
    ``split`` picks the subfolder, which is read as below. This is the seed demo's MNIST layout.
a folder of class subfolders
    Each subfolder is a class (sorted by name); PNG/JPEG/BMP/GIF images, grayscale or RGB. Without
    split folders, ``train`` and ``test`` are a fixed, stratified 80/20 split of every class (by a
    hash of each file's name: the same for every seed and machine) and ``all`` is every image.
    With ``class_index`` (a file in Keras' ``imagenet_class_index.json`` format or one class name
    per line, local or ``s3://``), the classes are the index's, in its order (a model's output
    order), and each subfolder names one of them: by WordNet id (``n01440764``), by name or by index.
a folder with MNIST IDX files
    ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` and ``t10k-...`` (gzipped or not).
a dataset a step wrote (a folder with ``dataset.json``)
    Copied with its per-image columns (patch provenance) and its provenance; it has one split.
an ``.npz`` file
    ``x_train``/``y_train``/``x_test``/``y_test`` (Keras' ``mnist.npz``) or ``x``/``y``;
    read with ``allow_pickle=False``.
``s3://bucket/prefix``
    Any of the above in S3-compatible storage (see :mod:`advpatch.io.storage`), copied to a
    temporary folder first.
``mlflow-run://RUN_ID/TAR_NAME[#FOLDER]``
    A dataset an earlier step logged to an MLflow run as a tar file (``deploy_patch`` logs
    ``adv_testing.tar`` holding ``adversarial_patched_data/``: the seed's cross-run reuse). The
    archive is checked member by member before anything is extracted. Without ``#FOLDER`` the
    archive must hold exactly one folder.

Images are resized to ``image_size`` x ``image_size`` when it is non-zero, and converted to
``color_mode`` (``auto`` keeps what the source has). ``max_examples`` keeps a random subset
drawn from ``seed``. Folders are streamed file by file, so memory stays bounded.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from advpatch import params
from advpatch.data.dataset import DEFAULT_SHARD_BYTES, MANIFEST, Dataset, DatasetSpec
from advpatch.data.readers import (
    ClassIndex,
    SourceError,
    class_folders,
    convert_images,
    embedded_digits,
    find_idx,
    read_class_index,
    read_idx,
    read_npz,
    split_folder,
    write_arrays,
    write_image_folder,
)
from advpatch.data.writer import DatasetWriter

log = logging.getLogger(__name__)

EMBEDDED_DIGITS = "digits"
S3_PREFIX = "s3://"
MLFLOW_RUN_PREFIX = "mlflow-run://"

__all__ = ["EMBEDDED_DIGITS", "MLFLOW_RUN_PREFIX", "S3_PREFIX", "SourceError", "embedded_digits", "import_dataset",
           "parse_mlflow_run"]


def import_dataset(
    source: str,
    output_path: os.PathLike[str] | str,
    *,
    split: str = "train",
    image_size: int = 0,
    color_mode: str = "auto",
    max_examples: int = 0,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    recorded_source: str = "",
    class_index: str = "",
) -> DatasetSpec:
    """Read ``source`` (see the module docstring) and write it as a dataset at ``output_path``.

    ``recorded_source`` is what the provenance names as the source (a remote source, not the
    temporary local copy it was read from)."""
    params.check(source=source, split=split, image_size=image_size, color_mode=color_mode,
                 max_examples=max_examples, seed=seed, class_index=class_index)
    index = None
    if class_index:
        if not _is_class_folder(source, split):
            raise params.ParameterError(f"class_index applies to a folder of class sub-folders, but source {source!r} "
                                        "is not one (leave class_index empty)")
        with tempfile.TemporaryDirectory() as tmp:
            index = read_class_index(fetch_file(class_index, Path(tmp), "class_index"))
        index.where = class_index
    return _import(source, output_path, index, recorded_source or source,
                   dict(split=split, image_size=image_size, color_mode=color_mode, max_examples=max_examples, seed=seed,
                        shard_bytes=shard_bytes))


def check_source(source: str, *, image_size: int = 0, color_mode: str = "auto", class_index: str = "",
                 splits: Tuple[str, ...] = ("train", "test")) -> Dict[str, DatasetSpec]:
    """Read a local ``source`` as ``load_dataset`` will, into a folder then thrown away: the checks
    that need the data's bytes (every image decodes, sizes agree, arrays hold numbers, a training
    split of two classes or more), made before a pipeline's first task. The embedded digits are
    known good; a remote source is fetched by its task, which says what is wrong with it. Returns
    each split's spec (none for a source not read here)."""
    specs: Dict[str, DatasetSpec] = {}
    if source == EMBEDDED_DIGITS or source.startswith((S3_PREFIX, MLFLOW_RUN_PREFIX)):
        return specs
    with tempfile.TemporaryDirectory(prefix="advpatch-check-") as tmp:
        for split in splits:
            specs[split] = import_dataset(source, Path(tmp) / split, split=split, image_size=image_size,
                                          color_mode=color_mode, class_index=class_index)
            if split == "train":
                Dataset(Path(tmp) / split).check_trainable(f"the training split of {source}")
    return specs


def _is_class_folder(source: str, split: str) -> bool:
    """Whether ``source`` can be a folder of class sub-folders (a remote one is taken to be: what
    it holds is known once it is fetched, and reading it then says if it is not)."""
    if source == EMBEDDED_DIGITS:
        return False
    if source.startswith((S3_PREFIX, MLFLOW_RUN_PREFIX)):
        return True
    path = Path(source)
    if not path.exists():
        return True  # loading it says it does not exist
    return (path.is_dir() and not (path / MANIFEST).is_file()
            and find_idx(split_folder(path, split), split) is None)


def _import(source: str, output_path: os.PathLike[str] | str, index: Optional[ClassIndex], recorded: str,
            options: Dict[str, Any]) -> DatasetSpec:
    split, image_size, color_mode, max_examples, seed, shard_bytes = (options[k] for k in (
        "split", "image_size", "color_mode", "max_examples", "seed", "shard_bytes"))
    if source.startswith((S3_PREFIX, MLFLOW_RUN_PREFIX)):
        with tempfile.TemporaryDirectory() as tmp:
            local = _fetch(source, Path(tmp))
            if index is not None and not _is_class_folder(str(local), split):
                raise params.ParameterError(f"class_index applies to a folder of class sub-folders, but source "
                                            f"{source!r} is not one (leave class_index empty)")
            return _import(str(local), output_path, index, recorded, options)
    record = {"step": "load_dataset", "source": recorded, "split": split, "image_size": image_size,
              "color_mode": color_mode, "max_examples": max_examples, "seed": seed,
              **({"class_index": index.where} if index is not None else {})}
    if source == EMBEDDED_DIGITS:
        x, y, names = embedded_digits(split)
        return write_arrays(x, y, names, output_path, image_size, color_mode, max_examples, seed, [record],
                            shard_bytes)
    path = Path(source)
    if not path.exists():
        raise SourceError(f"source {source!r} does not exist (expected 'digits', a folder, an .npz file, "
                          f"{S3_PREFIX}... or {MLFLOW_RUN_PREFIX}...)")
    if path.is_file():
        if path.suffix != ".npz":
            raise SourceError(f"source {source!r} is a file but not an .npz archive")
        x, y, names = read_npz(path, split)
        return write_arrays(x, y, names, output_path, image_size, color_mode, max_examples, seed, [record],
                            shard_bytes)
    if (path / MANIFEST).is_file():
        return _copy_dataset(Dataset(path), output_path, image_size, color_mode, max_examples, seed, record,
                             shard_bytes)
    folder = split_folder(path, split)
    if find_idx(folder, split) is not None:
        x, y, names = read_idx(folder, split)
        return write_arrays(x, y, names, output_path, image_size, color_mode, max_examples, seed, [record],
                            shard_bytes)
    holdout = split if folder == path and split != "all" else ""  # no split folders: a fixed 80/20 split
    return write_image_folder(folder, output_path, image_size, color_mode, max_examples, seed, [record], shard_bytes,
                              holdout=holdout, index=index)


def class_names(source: str, split: str = "test", class_index: str = "") -> Optional[List[str]]:
    """The class names ``source`` holds, found without reading its images (a folder listing, a
    manifest, the embedded digits, a local class index file): for checks that must come before any
    training. ``None`` where that would mean fetching or reading it all (``s3://``,
    ``mlflow-run://``, ``.npz``), or for a source that does not exist (loading it says why)."""
    if class_index:
        return read_class_index(class_index).names if not class_index.startswith(S3_PREFIX) else None
    if source == EMBEDDED_DIGITS:
        return [str(i) for i in range(10)]  # embedded_digits' class names, without reading its images
    path = Path(source)
    if source.startswith((S3_PREFIX, MLFLOW_RUN_PREFIX)) or not path.is_dir():
        return None
    if (path / MANIFEST).is_file():
        return list(Dataset(path, verify=False).spec.class_names)
    folder = split_folder(path, split)
    if find_idx(folder, split) is not None:
        return [str(i) for i in range(10)]
    return class_folders(folder) or None


def _copy_dataset(source: Dataset, output_path: os.PathLike[str] | str, image_size: int, color_mode: str,
                  max_examples: int, seed: int,
                  record: Dict[str, Any], shard_bytes: int) -> DatasetSpec:
    """A dataset a step wrote, converted as asked, with its per-image columns and provenance."""
    n = len(source)
    keep = np.ones(n, bool)
    if max_examples and max_examples < n:
        keep[:] = False
        keep[np.random.default_rng(seed).choice(n, max_examples, replace=False)] = True
    h, w, c = source.image_shape
    shape = (image_size or h, image_size or w, {"grayscale": 1, "rgb": 3}.get(color_mode, c))
    start = 0
    with DatasetWriter(output_path, shape, source.class_names, columns=source.spec.columns,
                       provenance=[*source.spec.provenance, record], shard_bytes=shard_bytes) as writer:
        for batch in source.batches(4096):
            sel = keep[start:start + len(batch["y"])]
            start += len(batch["y"])
            if sel.any():
                writer.write(convert_images(batch["x"][sel], image_size, color_mode), batch["y"][sel],
                             **{k: v[sel] for k, v in batch.items() if k not in ("x", "y")})
    return writer.spec


# --------------------------------------------------------------------------- remote sources
def parse_mlflow_run(source: str) -> Tuple[str, str, str]:
    """``mlflow-run://RUN_ID/TAR_NAME[#FOLDER]`` -> (run id, tar name, folder or '')."""
    body = source[len(MLFLOW_RUN_PREFIX):]
    location, _, folder = body.partition("#")
    run_id, _, tar_name = location.partition("/")
    tar_rule, folder_rule = _pattern("output_tar_name"), _pattern("output_dataset_name")
    if not run_id or not tar_rule.contains(tar_name) or (folder and not folder_rule.contains(folder)):
        raise params.ParameterError(
            f"source must look like {MLFLOW_RUN_PREFIX}RUN_ID/TAR_NAME[#FOLDER] (TAR_NAME {tar_rule.describe()}, "
            f"FOLDER {folder_rule.describe()}), got {source!r}")
    return run_id, tar_name, folder


def _pattern(name: str) -> params.Pattern:
    """The regular-expression rule of parameter ``name``."""
    rule = params.PARAMS[name].rule
    if not isinstance(rule, params.Pattern):
        raise TypeError(f"parameter {name}'s rule is {rule!r}, not a Pattern")
    return rule


def fetch_file(location: str, tmp: Path, parameter: str) -> Path:
    """A single file named by a local path or an ``s3://`` URI (copied under ``tmp``): weights, a
    model, a class index. A missing one is an error naming ``parameter`` and the location."""
    if location.startswith(S3_PREFIX):
        from advpatch.io import storage

        local = storage.download(location, tmp / "s3")
        if not local.is_file():
            raise SourceError(f"{parameter} {location!r} names a folder of objects, not one file")
        return local
    if not Path(location).is_file():
        raise SourceError(f"{parameter} file {location} does not exist")
    return Path(location)


def _fetch(source: str, tmp: Path) -> Path:
    """A local copy of a remote source, under ``tmp``."""
    if source.startswith(S3_PREFIX):
        from advpatch.io import storage

        return storage.download(source, tmp / "s3")
    from advpatch.io.files import extract_tar
    from advpatch.tracking.registry import download_run_artifact

    run_id, tar_name, folder = parse_mlflow_run(source)
    archive = download_run_artifact(run_id, tar_name, tmp / "download")
    return extract_tar(archive, tmp / "extracted", folder, where=f"{tar_name} of MLflow run {run_id}")

