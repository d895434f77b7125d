"""Writing a dataset artifact (see :mod:`advpatch.data.dataset` for the format): :class:`DatasetWriter`
streams images into shards of about ``shard_bytes``, saved and hashed on threads (:data:`WRITING` at
once) while the next one fills, into a hidden folder that becomes the artifact only when the writer
closes cleanly (:class:`advpatch.io.files.AtomicDir`); :func:`write_dataset` writes arrays held in
memory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np

from advpatch.data.dataset import DEFAULT_SHARD_BYTES, MANIFEST, DatasetSpec
from advpatch.errors import DatasetError
from advpatch.io.files import AtomicDir, Background, save_npz_hashed

WRITING = 2
"""Shards saved at once, each on a thread (its CRC, sha256 and the kernel's copy into the page
cache): one thread doing all of it held back load_dataset on two cores (docs/benchmarks.md)."""


def _save_shard(path: Path, arrays: Dict[str, np.ndarray], entry: Dict[str, Any]) -> None:
    entry["sha256"] = save_npz_hashed(path, **arrays)


class DatasetWriter:
    """Streams examples into a new dataset folder; use as a context manager.

    ``columns`` declares optional per-example columns (name -> numpy dtype); every
    :meth:`write` must then pass each of them.
    """

    def __init__(
        self,
        path: os.PathLike[str] | str,
        image_shape: Sequence[int],
        class_names: Sequence[str],
        *,
        columns: Optional[Mapping[str, str]] = None,
        provenance: Optional[List[Dict[str, Any]]] = None,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
    ) -> None:
        shape = tuple(int(d) for d in image_shape)
        if len(shape) != 3 or shape[2] not in (1, 3) or min(shape) < 1:
            raise DatasetError(f"image_shape must be [height, width, 1 or 3], got {list(shape)}")
        if not class_names:
            raise DatasetError("a dataset needs at least one class name")
        self.path = Path(path)
        self.spec = DatasetSpec(
            image_shape=shape,
            class_names=[str(c) for c in class_names],
            columns={k: np.dtype(v).name for k, v in (columns or {}).items()},
            provenance=list(provenance or []),
        )
        self._folder = AtomicDir(self.path)
        self._tmp = self._folder.tmp
        self._per_shard = max(1, shard_bytes // int(np.prod(shape)))
        self._pending: List[Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]] = []
        self._pending_n = 0
        self._closed = False
        self._background = Background(WRITING)

    def write(self, x: np.ndarray, y: np.ndarray, **columns: np.ndarray) -> None:
        """Append a batch: ``x`` uint8 ``[n, H, W, C]``, ``y`` integer labels ``[n]``. The writer keeps
        ``x`` (not a copy) until its shard is written: it must not change after."""
        x = np.asarray(x)
        y = np.asarray(y)
        if x.dtype != np.uint8:
            raise DatasetError(f"images must be uint8 in [0, 255], got dtype {x.dtype}")
        if x.shape[1:] != self.spec.image_shape:
            raise DatasetError(
                f"images must have shape [n, {', '.join(map(str, self.spec.image_shape))}], got {list(x.shape)}"
            )
        if y.shape != (x.shape[0],):
            raise DatasetError(f"labels must have shape [{x.shape[0]}], got {list(y.shape)}")
        if y.size and (y.min() < 0 or y.max() >= self.spec.num_classes):
            raise DatasetError(f"labels must be in [0, {self.spec.num_classes - 1}], got {y.min()}..{y.max()}")
        if set(columns) != set(self.spec.columns):
            raise DatasetError(f"write() needs columns {sorted(self.spec.columns)}, got {sorted(columns)}")
        cols = {}
        for name, values in columns.items():
            values = np.asarray(values, dtype=self.spec.columns[name])
            if values.shape[:1] != (x.shape[0],):
                raise DatasetError(f"column {name!r} must have {x.shape[0]} rows, got {values.shape[:1]}")
            cols[name] = values
        # Split the batch at shard boundaries so every shard except the last is full.
        start = 0
        while start < x.shape[0]:
            take = min(x.shape[0] - start, self._per_shard - self._pending_n)
            sl = slice(start, start + take)
            self._pending.append((x[sl], y[sl].astype(np.int32), {k: v[sl] for k, v in cols.items()}))
            self._pending_n += take
            start += take
            if self._pending_n >= self._per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_n:
            return
        arrays = {
            "x": [p[0] for p in self._pending],  # written piece by piece (save_npz_hashed): no copy of the shard
            "y": np.concatenate([p[1] for p in self._pending]),
        }
        for name in self.spec.columns:
            arrays[f"col_{name}"] = np.concatenate([p[2][name] for p in self._pending])
        name = f"shard-{len(self.spec.shards):05d}.npz"
        entry = {"file": name, "num_examples": self._pending_n, "sha256": ""}
        self.spec.shards.append(entry)
        self.spec.num_examples += self._pending_n
        self._pending, self._pending_n = [], 0
        self._background.submit(_save_shard, self._tmp / name, arrays, entry)  # while the next shard fills

    def close(self) -> "DatasetSpec":
        """Flush, write the manifest and move the folder into place."""
        if self._closed:
            return self.spec
        self._flush()
        try:
            self._background.wait()
        except BaseException:
            self.abort()
            raise
        if self.spec.num_examples == 0:
            self.abort()
            raise DatasetError(f"refusing to write an empty dataset to {self.path}")
        (self._tmp / MANIFEST).write_text(json.dumps(self.spec.to_json(), indent=1))
        self._closed = True
        try:
            self._folder.commit()
        except FileExistsError as e:
            raise DatasetError(str(e)) from None
        return self.spec

    def abort(self) -> None:
        self._closed = True
        self._background.wait(raise_error=False)
        self._folder.abort()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_dataset(path: os.PathLike[str] | str, x: np.ndarray, y: np.ndarray, class_names: Sequence[str], *,
                  provenance: Optional[List[Dict[str, Any]]] = None, columns: Optional[Mapping[str, np.ndarray]] = None,
                  shard_bytes: int = DEFAULT_SHARD_BYTES) -> DatasetSpec:
    """Write in-memory arrays as a dataset (convenience over :class:`DatasetWriter`)."""
    columns = dict(columns or {})
    dtypes = {k: np.asarray(v).dtype.name for k, v in columns.items()}
    with DatasetWriter(path, x.shape[1:], class_names, columns=dtypes, provenance=provenance,
                       shard_bytes=shard_bytes) as writer:
        writer.write(x, y, **columns)
    return writer.spec
