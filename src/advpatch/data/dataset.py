"""The Dataset artifact: a folder of image shards plus a JSON manifest.

Layout (format ``advpatch-dataset``, version 1)::

    <dataset>/
      dataset.json          manifest: see below
      shard-00000.npz       x: uint8 [n, H, W, C]; y: int32 [n]; optional per-example columns
      shard-00001.npz       ...

``dataset.json`` holds ``format``, ``version``, ``num_examples``, ``image_shape`` ``[H, W, C]``,
``dtype`` (always ``uint8``), ``value_range`` (``[0, 255]``), ``class_names``, ``columns`` (name ->
numpy dtype of each per-example column, e.g. ``patched: bool``), ``shards`` (file, count, sha256)
and ``provenance``: the list of steps that made the data, each with its parameters.

Why this shape:

* Shards keep memory bounded where a step streams: writers flush every ``shard_bytes`` and
  :meth:`Dataset.batches` reads one shard at a time (``load_dataset``, ``deploy_patch``, the
  defences and ``infer`` stream; ``gen_patch`` reads the labels and then only the images it draws;
  ``train`` streams through ``tf.data`` when the set is larger than its memory budget).
* ``.npz`` read with ``allow_pickle=False`` and a JSON manifest: nothing is ever unpickled.
* Pixels are stored as ``uint8`` in ``[0, 255]``, the way images live on disk; models take float
  ``[0, 1]`` (see :func:`to_float`).
* A writer builds the folder under a temporary name and renames it into place when it closes
  cleanly (:class:`advpatch.io.files.AtomicDir`), so a failed step leaves no half-written artifact.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from advpatch.errors import DatasetError
from advpatch.io.files import read_arrays, read_manifest
from advpatch.io.npz import Buffers, read_stored

FORMAT = "advpatch-dataset"
VERSION = 1
MANIFEST = "dataset.json"
DEFAULT_SHARD_BYTES = 64 * 2**20



@dataclass
class DatasetSpec:
    """What ``dataset.json`` says about a dataset."""

    image_shape: Tuple[int, int, int]
    class_names: List[str]
    num_examples: int = 0
    columns: Dict[str, str] = field(default_factory=dict)
    shards: List[Dict[str, Any]] = field(default_factory=list)
    provenance: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def name(self) -> str:
        """What the data is, from its provenance: ``digits/test``, ``digits/test + deploy_patch
        augment + jpeg_compression``."""
        parts = []
        for record in self.provenance:
            step = record.get("step", "?")
            if step == "load_dataset":
                source = Path(str(record.get("source", "?"))).name or record.get("source")
                parts = [f"{source}/{record.get('split', '')}"]
            elif step == "deploy_patch":
                parts.append(f"deploy_patch {record.get('patch_deployment_method', '')}".strip())
            else:
                parts.append(step)
        return " + ".join(parts) or "dataset"

    @property
    def source(self) -> str:
        """Where the data was first read from (the load step's source)."""
        loads = [r for r in self.provenance if r.get("step") == "load_dataset"]
        return str(loads[-1].get("source", "")) if loads else ""

    @property
    def digest(self) -> str:
        """A short fingerprint of the content: the SHA-256 of the shards' SHA-256s."""
        h = hashlib.sha256()
        for shard in self.shards:
            h.update(str(shard.get("sha256", "")).encode())
        return h.hexdigest()[:12]

    def to_json(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "num_examples": self.num_examples,
            "image_shape": list(self.image_shape),
            "dtype": "uint8",
            "value_range": [0, 255],
            "class_names": list(self.class_names),
            "columns": dict(self.columns),
            "shards": list(self.shards),
            "provenance": list(self.provenance),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "DatasetSpec":
        if data.get("format") != FORMAT:
            raise DatasetError(f"{where} is not an {FORMAT} manifest (format={data.get('format')!r})")
        if data.get("version") != VERSION:
            raise DatasetError(
                f"{where} has {FORMAT} version {data.get('version')!r}; this advpatch reads version {VERSION}"
            )
        spec = cls(
            image_shape=tuple(int(d) for d in data["image_shape"]),  # type: ignore[arg-type]
            class_names=[str(c) for c in data["class_names"]],
            num_examples=int(data["num_examples"]),
            columns={str(k): str(v) for k, v in data.get("columns", {}).items()},
            shards=[dict(s) for s in data["shards"]],
            provenance=[dict(r) for r in data.get("provenance", [])],
        )
        if len(spec.image_shape) != 3 or min(spec.image_shape) < 1 or spec.image_shape[2] not in (1, 3) \
                or not spec.class_names or spec.num_examples < 0:
            raise DatasetError(f"{where}: image_shape {list(spec.image_shape)} (H, W, 1 or 3), "
                               f"{len(spec.class_names)} classes or num_examples {spec.num_examples} is not usable")
        for shard in spec.shards:
            name = str(shard["file"])
            if Path(name).name != name or name in ("", ".", ".."):
                raise DatasetError(f"shard name {name!r} in {where} is not a plain file name")
            shard["file"], shard["num_examples"] = name, int(shard["num_examples"])
            shard["sha256"] = str(shard["sha256"])
            if shard["num_examples"] < 0:
                raise DatasetError(f"{where}: shard {name} has {shard['num_examples']} examples")
        if sum(s["num_examples"] for s in spec.shards) != spec.num_examples:
            raise DatasetError(f"{where}: the shards hold {sum(s['num_examples'] for s in spec.shards)} examples, "
                               f"not num_examples {spec.num_examples}")
        return spec


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the input every advpatch model takes."""
    out: np.ndarray = x.astype(np.float32) * np.float32(1.0 / 255.0)
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float pixels in [0, 1] -> uint8, rounding to nearest."""
    out: np.ndarray = np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return out


class Dataset:
    """A dataset folder opened for reading."""

    def __init__(self, path: os.PathLike[str] | str, *, verify: bool = True) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise DatasetError(f"{self.path} is not a dataset: {MANIFEST} is missing")
        self.spec = read_manifest(manifest, DatasetError, "dataset manifest",
                                  lambda data: DatasetSpec.from_json(data, str(manifest)))
        self._verify = verify

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self.spec.image_shape

    @property
    def class_names(self) -> List[str]:
        return self.spec.class_names

    def __len__(self) -> int:
        return self.spec.num_examples

    def shards(self) -> Iterator[Dict[str, np.ndarray]]:
        """Yield each shard as ``{"x", "y", <columns>...}``."""
        for i in range(len(self.spec.shards)):
            yield self.read_shard(i)

    def read_shard(self, i: int, buffers: Optional[Buffers] = None) -> Dict[str, np.ndarray]:
        """Shard ``i`` as ``{"x", "y", <columns>...}`` (checked against its sha256); its images in a
        buffer of ``buffers`` when given."""
        shard = self.spec.shards[i]
        file = self.path / shard["file"]
        if not file.is_file():
            raise DatasetError(f"{file} is missing: the dataset is incomplete")
        arrays = read_stored(file, ["x", "y", *(f"col_{c}" for c in self.spec.columns)], DatasetError,
                             sha256=shard["sha256"] if self._verify else None,
                             mismatch=f"{file} does not match its sha256 in {MANIFEST}: the dataset is corrupt",
                             buffers=buffers)
        x, y = arrays.pop("x"), arrays.pop("y")
        n = shard["num_examples"]
        if x.dtype != np.uint8 or x.shape != (n, *self.image_shape) or y.shape != (n,) or y.dtype.kind not in "iu" \
                or any(a.shape[:1] != (n,) for a in arrays.values()):
            raise DatasetError(f"{file} does not hold what {MANIFEST} says: x {x.dtype} {list(x.shape)}, y {y.dtype} "
                               f"{list(y.shape)} for {n} uint8 images of {list(self.image_shape)}")
        if n and (y.min() < 0 or y.max() >= self.spec.num_classes):
            raise DatasetError(f"{file} has labels outside [0, {self.spec.num_classes - 1}]")
        return {"x": x, "y": y, **{name[4:]: a for name, a in arrays.items()}}

    @property
    def layout(self) -> Dict[str, Any]:
        """Where this data sits in the data it is a shard of (deploy_patch's or infer's ``shard_index``):
        ``{}`` when whole, else ``offset`` (its first row's position there), ``before`` and ``total``
        ([unpatched, patched] rows before it and in all), ``index`` and ``count``."""
        return next((dict(r["shard"]) for r in reversed(self.spec.provenance) if "shard" in r), {})

    def batches(self, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
        """Yield rows ``start:stop`` in batches cut where the whole data's batches of ``batch_size`` are
        cut (of a shard, :attr:`layout`: a shard's batches are the whole's), in order. The next shard
        is read ahead, on a thread, while the caller works on the batches of the one before."""
        cut = self.layout.get("offset", 0) + start  # the whole's position of the next row to yield
        buf: List[Dict[str, np.ndarray]] = []
        n = 0
        for part in self._parts(start, stop, reuse=False):
            buf.append(part)
            n += len(part["y"])
            while n and n >= (size := batch_size - cut % batch_size):
                batch, buf = _first_rows(buf, size)
                yield batch
                n, cut = n - size, cut + size
        if n:
            yield _concat(buf)

    def blocks(self, size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
        """Yield rows ``start:stop`` in order, at most ``size`` at a time, each block within one shard:
        views of the shard as read (writable, never copied), where :meth:`batches` copies a batch
        across a shard's end together. For work whose bytes do not depend on how the rows are
        grouped. Read ahead as :meth:`batches`, into the buffer of a shard read before that nothing
        holds any more where there is one (:class:`~advpatch.io.npz.Buffers`): a caller patching
        every shard's rows and writing them makes no fresh pages for the kernel to zero (16% of
        deploy_patch's CPU time at 224x224). :meth:`batches` does not: a step holding a model's
        working memory (infer) would keep an idle shard's buffer on top of it (+64 MiB at its peak).
        """
        size = max(1, size)
        for part in self._parts(start, stop, reuse=True):
            for at in range(0, len(part["y"]), size):
                yield {k: v[at:at + size] for k, v in part.items()}

    def _parts(self, start: int, stop: Optional[int], reuse: bool) -> Iterator[Dict[str, np.ndarray]]:
        """Each shard's rows among ``start:stop``, in order; the next shard is read (and its sha256
        checked) on a thread while the caller works on the one before; with ``reuse``, into the
        buffer of a shard read before that nothing holds any more."""
        stop = len(self) if stop is None else stop
        at = 0
        wanted: List[Tuple[int, int]] = []  # (shard, its first row) of the shards rows start:stop are in
        for i, shard in enumerate(self.spec.shards):
            first, at = at, at + shard["num_examples"]
            if at > start and first < stop:
                wanted.append((i, first))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="advpatch-read") as reader:
            buffers = Buffers() if reuse else None
            ahead = [reader.submit(self.read_shard, i, buffers) for i, _ in wanted[:1]]
            for k, (_, first) in enumerate(wanted):
                part = ahead.pop().result()
                if k + 1 < len(wanted):
                    ahead.append(reader.submit(self.read_shard, wanted[k + 1][0], buffers))
                yield {key: v[max(start - first, 0):stop - first] for key, v in part.items()}
                del part

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The images at ``indices`` (in that order), reading one shard at a time."""
        at = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(at), *self.image_shape), dtype=np.uint8)
        start = 0
        for shard in self.shards():
            n = len(shard["y"])
            hit = (at >= start) & (at < start + n)
            out[hit] = shard["x"][at[hit] - start]
            start += n
            if start > at.max(initial=-1):
                break
        return out

    def labels(self) -> np.ndarray:
        """Every example's label, reading no image."""
        parts = []
        for shard in self.spec.shards:
            parts.append(read_arrays(self.path / shard["file"], ["y"], DatasetError)["y"])
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def load(self) -> Dict[str, np.ndarray]:
        """All examples at once as ``{"x", "y", <columns>...}`` (small datasets)."""
        return _concat(list(self.shards()))

    def check_trainable(self, where: str) -> None:
        """A classifier learns from two classes or more: one class (or no image) is refused."""
        if len(self.class_names) < 2 or len(self) == 0:
            raise DatasetError(f"{where} has {len(self)} images in {len(self.class_names)} class(es) "
                               f"({', '.join(self.class_names[:3])}): training needs images of at least 2 classes")

    def summary(self) -> str:
        h, w, c = self.image_shape
        return f"{len(self)} images {h}x{w}x{c}, {self.spec.num_classes} classes"


def _first_rows(parts: List[Dict[str, np.ndarray]], size: int
                ) -> Tuple[Dict[str, np.ndarray], List[Dict[str, np.ndarray]]]:
    """The first ``size`` rows of ``parts`` (views of one part when it holds them all, else those
    rows copied together: a batch across a shard's end) and the parts left."""
    taken, rest, need = [], list(parts), size
    while need:
        part = rest.pop(0)
        n = len(part["y"])
        if n > need:
            taken.append({k: v[:need] for k, v in part.items()})
            rest.insert(0, {k: v[need:] for k, v in part.items()})
            n = need
        else:
            taken.append(part)
        need -= n
    return _concat(taken), rest


def _concat(parts: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
