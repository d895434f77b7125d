"""Readers of the data formats a source can be: the embedded digits, ``.npz`` arrays, MNIST IDX
files and folders of class sub-folders of images (see :mod:`advpatch.data.sources` for how a source is
chosen). Each writes a Dataset artifact through :class:`~advpatch.data.dataset.DatasetWriter`."""

from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from advpatch import parallel
from advpatch.data.classes import ClassIndex as ClassIndex  # re-exported
from advpatch.data.classes import read_class_index as read_class_index  # re-exported
from advpatch.data.dataset import DatasetSpec
from advpatch.data.writer import DatasetWriter
from advpatch.errors import SourceError as SourceError  # re-exported
from advpatch.io import jpeg

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
JPEG_SUFFIXES = (".jpg", ".jpeg")
SPLIT_FOLDERS = {"train": ("training", "train"), "test": ("testing", "test")}
IDX_FILES = {"train": "train", "test": "t10k"}
DIGITS_TEST_FRACTION = 0.2
_CHUNK = 512


# --------------------------------------------------------------------------- embedded digits
def embedded_digits(split: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """scikit-learn's digits framed like MNIST: uint8 [n, 28, 28, 1].

    Read from the data file scikit-learn ships (what ``sklearn.datasets.load_digits`` reads),
    without importing scikit-learn: that import costs a task more than a second."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the embedded digits come with scikit-learn, which is not installed")
    data_file = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(data_file, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    images = data[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0  # 0..16 -> 0..1
    labels = data[:, -1].astype(np.int32)
    # Fixed stratified split: the same images are test images whatever the seed.
    rng = np.random.RandomState(0)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_test[idx[: round(len(idx) * DIGITS_TEST_FRACTION)]] = True
    keep = {"train": ~is_test, "test": is_test, "all": np.ones_like(is_test)}[split]
    framed = np.zeros((int(keep.sum()), 28, 28, 1), dtype=np.uint8)
    for i, img in enumerate(images[keep]):
        digit = Image.fromarray((img * 255).astype(np.uint8)).resize((20, 20), Image.Resampling.BILINEAR)
        framed[i, 4:24, 4:24, 0] = np.asarray(digit)
    return framed, labels[keep], [str(i) for i in range(10)]


# --------------------------------------------------------------------------- npz and idx
def read_npz(path: Path, split: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise SourceError(f"cannot read {path} as an .npz archive: {e}") from None
    try:
        return _read_npz_arrays(npz, path, split)
    except ValueError as e:  # e.g. object arrays, which would need pickle
        if isinstance(e, SourceError):
            raise
        raise SourceError(f"cannot read {path}: {e}") from None
    finally:
        npz.close()


def _read_npz_arrays(npz: Any, path: Path, split: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    keys = set(npz.files)
    if split in ("train", "test") and {f"x_{split}", f"y_{split}"} <= keys:
        x, y = npz[f"x_{split}"], npz[f"y_{split}"]
    elif split == "all" and {"x_train", "y_train", "x_test", "y_test"} <= keys:
        x = np.concatenate([npz["x_train"], npz["x_test"]])
        y = np.concatenate([npz["y_train"], npz["y_test"]])
    elif {"x", "y"} <= keys:
        x, y = npz["x"], npz["y"]
    else:
        raise SourceError(
            f"{path} has arrays {sorted(keys)}; expected x_{split}/y_{split} or x/y"
        )
    names = [str(n) for n in npz["class_names"]] if "class_names" in keys else None
    x = _as_nhwc_uint8(x, str(path))
    y = np.asarray(y).reshape(-1)
    whole = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all()))
    if y.dtype == np.bool_ or not whole or (y.size and y.min() < 0):
        raise SourceError(f"{path}: labels must be whole numbers >= 0 (class indices), got dtype {y.dtype}"
                          f"{f' from {y.min()} to {y.max()}' if whole and y.size else ''}")
    if len(y) != len(x) or not len(y):
        raise SourceError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y.astype(np.int32), names or [str(i) for i in range(int(y.max()) + 1)]


def find_idx(folder: Path, split: str) -> Optional[Tuple[Path, Path]]:
    if split not in IDX_FILES:
        return None
    prefix = IDX_FILES[split]
    for suffix in ("", ".gz"):
        images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def _read_idx_file(path: Path, expected_dims: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != expected_dims:
        raise SourceError(f"{path} is not an IDX file of unsigned bytes with {expected_dims} dimensions")
    dims = struct.unpack(f">{expected_dims}I", data[4 : 4 + 4 * expected_dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * expected_dims)
    if body.size != int(np.prod(dims)):
        raise SourceError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims)


def read_idx(folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    found = find_idx(folder, split)
    assert found is not None
    x = _read_idx_file(found[0], 3)[..., None]
    y = _read_idx_file(found[1], 1).astype(np.int32)
    if len(x) != len(y):
        raise SourceError(f"{folder}: {len(x)} images but {len(y)} labels")
    return x, y, [str(i) for i in range(10)]


def _as_nhwc_uint8(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise SourceError(f"{where}: images must be [n, H, W] or [n, H, W, 1|3], got {list(x.shape)}")
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise SourceError(f"{where}: images must be numbers (uint8 0-255, or floats in [0, 1] or [0, 255]), "
                          f"got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and x.size and not np.isfinite(x).all():
        raise SourceError(f"{where}: images hold {int((~np.isfinite(x)).sum())} NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise SourceError(f"{where}: image values must be in [0, 1] or [0, 255], got {x.min()} to {x.max()}")
    if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0:
        x = x * 255.0
    return np.rint(x).astype(np.uint8)


# --------------------------------------------------------------------------- folders
def split_folder(path: Path, split: str) -> Path:
    """The folder of ``split`` under ``path`` (``training/``, ``Training/`` as Fruits360 has it,
    ``train/``..., in any case), or ``path`` itself when it has none."""
    if split in SPLIT_FOLDERS and path.is_dir():
        found = {p.name.lower(): p for p in sorted(path.iterdir()) if p.is_dir()}
        for name in SPLIT_FOLDERS[split]:
            if name in found:
                return found[name]
        other = next((found[n].name for s, names in SPLIT_FOLDERS.items() if s != split for n in names if n in found),
                     None)
        if other:  # split folders, but not this one: not a folder of classes either
            raise SourceError(f"{path} has a {other}/ folder but no {split} split folder "
                              f"({'/ or '.join(SPLIT_FOLDERS[split])}/)")
    return path


def class_folders(folder: Path) -> List[str]:
    """The class names of a class-subfolder layout: its subfolders (hidden ones left out), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_image_folder(folder: Path, holdout: str = "", index: Optional[ClassIndex] = None
                      ) -> Tuple[List[Tuple[Path, int]], List[str]]:
    """(file, class index) pairs of a class-subfolder layout, sorted, and the class names.

    ``holdout`` ``"train"`` or ``"test"`` keeps that part of a fixed, stratified split of every
    class (:func:`holdout_part`); ``""`` keeps every file. With ``index`` (a class index file), the
    classes are the index's, in its order, and each sub-folder is matched to one of them."""
    folders = class_folders(folder)
    if not folders:
        raise SourceError(
            f"{folder} has no class subfolders, MNIST IDX files or split folders (training/, testing/)"
        )
    labels = index.match(folders, folder) if index is not None else list(range(len(folders)))
    files: List[Tuple[Path, int]] = []
    for label, name in zip(labels, folders):
        with os.scandir(folder / name) as found:  # one directory read, no stat per file (ImageNet's: 50,000)
            names = sorted(f.name for f in found
                           if os.path.splitext(f.name)[1].lower() in IMAGE_SUFFIXES and f.is_file())
        images = [folder / name / f for f in names]  # sorted as the paths sort
        if holdout:
            images = holdout_part(images, name, holdout)
        files.extend((f, label) for f in images)
    if not files:
        raise SourceError(f"{folder} has class subfolders {folders[:5]} but no images ({', '.join(IMAGE_SUFFIXES)})")
    if index is not None:
        files.sort(key=lambda pair: pair[1])  # in the index's class order, as a folder's own classes are
    return files, (index.names if index is not None else folders)


FOLDER_TEST_FRACTION = 0.2
"""Share of each class a folder without split folders holds out as its ``test`` split."""


def holdout_part(files: Sequence[Path], class_name: str, part: str) -> List[Path]:
    """The ``part`` (``"train"`` or ``"test"``) of one class's files in a folder that has no split
    folders: :data:`FOLDER_TEST_FRACTION` of them (at least one where the class has two or more)
    are ``test``, chosen by a hash of each file's name, so the split is the same on every machine and
    for every seed, and a file keeps its side when others are added."""
    import hashlib

    ranked = sorted(files, key=lambda f: hashlib.sha256(f"{class_name}/{f.name}".encode()).hexdigest())
    n_test = max(1, round(len(ranked) * FOLDER_TEST_FRACTION)) if len(ranked) >= 2 else 0
    test = set(ranked[:n_test])
    return [f for f in files if (f in test) == (part == "test")]


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
"""PIL modes that hold one grey channel."""


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> grey [..., 1] with ITU-R 601-2 luma in PIL's own integer arithmetic,
    so an RGB picture gives the same grey levels whether it came from a file or an array."""
    a = rgb.astype(np.uint32)
    grey = (a[..., 0] * 19595 + a[..., 1] * 38470 + a[..., 2] * 7471 + 0x8000) >> 16
    return grey.astype(np.uint8)[..., None]


def _read_image(path: Path, mode: str, size: Optional[Tuple[int, int]], out: Optional[np.ndarray] = None
                ) -> np.ndarray:
    """The image at ``path`` as uint8 [H, W, C] (``mode`` 'grayscale' or 'rgb', resized to ``size``).
    ``out``: where it goes if it has that shape (a JPEG needing neither conversion nor resizing is
    decoded straight into it, Python's lock released: a plain ``.jpg`` or ``.jpeg`` file without
    ``Image.open`` (:func:`advpatch.io.jpeg.decode_plain`), any other after its parse
    (:func:`advpatch.io.jpeg.decode_opened`)); returns ``out`` then, else a new array."""
    import struct

    from PIL import Image, UnidentifiedImageError

    gray = mode == "grayscale"
    if (out is not None and path.suffix.lower() in JPEG_SUFFIXES and out.shape[-1] == (1 if gray else 3)
            and jpeg.decode_plain(path, gray, out[..., 0] if gray else out)):
        return out  # a plain JPEG of the mode and size wanted: no Image.open
    try:
        with Image.open(path) as img:
            target = "L" if mode == "grayscale" and img.mode in GRAY_MODES else "RGB"
            if (out is not None and img.mode == target and (size is None or img.size == (size[1], size[0]))
                    and out.shape[-1] == (1 if target == "L" else 3)
                    and jpeg.decode_opened(img, out[..., 0] if target == "L" else out)):
                return out
            if img.mode != target:  # (converting to its own mode is a copy of every pixel: not made)
                img = img.convert(target)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise SourceError(f"cannot read image {path}: {e}") from None
    except (ValueError, SyntaxError, EOFError, struct.error, MemoryError, TypeError, IndexError) as e:
        # what Pillow's decoders raise on some corrupt files (e.g. "Truncated IHDR chunk", "broken PNG file")
        raise SourceError(f"cannot read image {path}: corrupt ({type(e).__name__}: {e})") from None
    if arr.ndim == 2:
        return arr[..., None]
    return to_grayscale(arr) if mode == "grayscale" else arr


def write_image_folder(
    folder: Path,
    output_path: os.PathLike[str] | str,
    image_size: int,
    color_mode: str,
    max_examples: int,
    seed: int,
    provenance: List[Dict[str, Any]],
    shard_bytes: int,
    holdout: str = "",
    index: Optional[ClassIndex] = None,
) -> DatasetSpec:
    """A class-subfolder layout as a dataset (see :func:`list_image_folder` for ``holdout`` and
    ``index``), read in chunks of :data:`_CHUNK` images."""
    from PIL import Image

    files, classes = list_image_folder(folder, holdout, index)
    if max_examples and max_examples < len(files):
        keep = np.sort(np.random.default_rng(seed).choice(len(files), max_examples, replace=False))
        files = [files[i] for i in keep]
    first = files[0][0]
    try:
        with Image.open(first) as img:
            native, first_mode = (img.size[1], img.size[0]), img.mode
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot read image {first}: {e}") from None
    mode = color_mode
    if mode == "auto":
        mode = "grayscale" if first_mode in GRAY_MODES else "rgb"
    size = (image_size, image_size) if image_size else None
    shape = (*(size or native), 1 if mode == "grayscale" else 3)
    log.info("reading %d images in %d classes from %s as %s", len(files), len(classes), folder, shape)
    with DatasetWriter(output_path, shape, classes, provenance=provenance, shard_bytes=shard_bytes) as writer:
        for start in range(0, len(files), _CHUNK):
            chunk = files[start : start + _CHUNK]
            x = np.empty((len(chunk), *shape), dtype=np.uint8)

            # on every core: decoding releases Python's lock
            def read(i: int, chunk: List[Tuple[Path, int]] = chunk, x: np.ndarray = x) -> None:
                f, row = chunk[i][0], x[i]
                img = _read_image(f, mode, size, out=row)
                if img.shape != shape:
                    raise SourceError(
                        f"{f} is {img.shape[1]}x{img.shape[0]} but earlier images are {shape[1]}x{shape[0]}: "
                        "set image_size to resize them all"
                    )
                if img is not row:
                    row[...] = img

            parallel.in_parallel(read, len(chunk))
            writer.write(x, np.array([c for _, c in chunk], dtype=np.int32))
    return writer.spec


def png_base64(image: np.ndarray, max_side: int = 128) -> str:
    """A uint8 HxWxC image as a base64 PNG for reports: at its own size (a page enlarges it with
    sharp pixels), or shrunk to ``max_side`` when larger."""
    import base64
    import io

    from PIL import Image

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                         Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_arrays(
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    output_path: os.PathLike[str] | str,
    image_size: int,
    color_mode: str,
    max_examples: int,
    seed: int,
    provenance: List[Dict[str, Any]],
    shard_bytes: int,
) -> DatasetSpec:
    if len(x) == 0:
        raise SourceError(f"source {provenance[-1]['source']!r} has no images for split {provenance[-1]['split']!r}")
    if max_examples and max_examples < len(x):
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_examples, replace=False))
        x, y = x[keep], y[keep]
    x = convert_images(x, image_size, color_mode)
    with DatasetWriter(output_path, x.shape[1:], class_names, provenance=provenance, shard_bytes=shard_bytes) as writer:
        writer.write(x, y)
    return writer.spec


def convert_images(x: np.ndarray, image_size: int, color_mode: str) -> np.ndarray:
    """Resize uint8 NHWC images to ``image_size`` (0: keep) and convert channels."""
    from PIL import Image

    if color_mode == "grayscale" and x.shape[-1] == 3:
        x = to_grayscale(x)
    elif color_mode == "rgb" and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if image_size and x.shape[1:3] != (image_size, image_size):
        out = np.empty((len(x), image_size, image_size, x.shape[-1]), dtype=np.uint8)

        def resize(i: int, x: np.ndarray = x) -> None:
            img = x[i]
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            arr = np.asarray(pil.resize((image_size, image_size), Image.Resampling.BILINEAR))
            out[i] = arr[..., None] if arr.ndim == 2 else arr

        parallel.in_parallel(resize, len(x))
        x = out
    return x
