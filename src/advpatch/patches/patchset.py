"""The patch set artifact, and putting its patches on images.

A :class:`PatchSet` holds patches, their masks and targets: everything needed to apply them, with
neither the model nor the attack. :func:`apply_patches` warps and blends only a window around each
patch; :func:`deploy` streams a dataset through it and writes the patched dataset with each image's
provenance (:data:`PATCH_COLUMNS`).

Patch set layout (format ``advpatch-patchset``, version 1)::

    <patches>/
      patchset.json     targets, class names, image shape, settings, per-patch figures, previews
      patches.npz       patches float32 [k, P, P, C], masks float32 [k, P, P], targets int32 [k]
      patch-NN-target-NAME.png   a preview of each patch
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, cast

import numpy as np

from advpatch.errors import PatchSetError
from advpatch.io.files import PathLike, atomic_dir, read_arrays, read_manifest, save_npz
from advpatch.patches.geometry import Placements, half_extents, mask_outline, sample_placements, transforms

if TYPE_CHECKING:
    from advpatch.data.dataset import Dataset
    from advpatch.data.writer import DatasetWriter
    from advpatch.patches.worst_case import Search

FORMAT = "advpatch-patchset"
VERSION = 1
MANIFEST = "patchset.json"
ARRAYS = "patches.npz"

PATCH_COLUMNS = {
    "patched": "bool",
    "patch_index": "int16",
    "patch_target": "int16",
    "patch_scale": "float32",
    "patch_angle": "float32",
    "patch_x": "float32",
    "patch_y": "float32",
    "source_index": "int64",
}
"""Per-image provenance :func:`deploy` writes: was it patched, with which patch (and so target), at
which scale, angle and centre, and which input image it came from."""



@dataclass
class PatchSet:
    """Patches, their masks and targets: everything needed to apply them (no model, no attack)."""

    patches: np.ndarray  # float32 [k, P, P, C] in [0, 1]
    masks: np.ndarray  # float32 [k, P, P] in [0, 1]
    targets: np.ndarray  # int32 [k]
    class_names: List[str]
    image_shape: Tuple[int, int, int]
    settings: Dict[str, Any] = field(default_factory=dict)
    metrics: List[Dict[str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def patch_size(self) -> int:
        return int(self.patches.shape[1])

    def canvases(self) -> np.ndarray:
        """[k, P, P, C + 1]: each patch with its mask as the last channel."""
        return np.concatenate([self.patches, self.masks[..., None]], axis=-1).astype(np.float32)

    def rgba(self, i: int) -> np.ndarray:
        """Patch ``i`` as a uint8 RGBA image, its mask as alpha."""
        patch, mask = self.patches[i], self.masks[i]
        rgb = patch if patch.shape[-1] == 3 else np.repeat(patch, 3, -1)
        rgba: np.ndarray = np.rint(np.concatenate([rgb, mask[..., None]], -1) * 255).astype(np.uint8)
        return rgba

    def save(self, path: PathLike) -> None:
        """Write ``patchset.json``, ``patches.npz`` and one PNG preview per patch, atomically."""
        from PIL import Image

        with atomic_dir(path) as tmp:
            save_npz(tmp / ARRAYS, patches=self.patches.astype(np.float32), masks=self.masks.astype(np.float32),
                     targets=self.targets.astype(np.int32))
            previews = []
            for i in range(len(self)):
                name = f"patch-{i:02d}-target-{self.class_names[self.targets[i]]}.png"
                img = Image.fromarray(self.rgba(i), "RGBA")
                if img.width < 128:  # nearest-neighbour upscale so a 28-pixel patch is visible
                    img = img.resize((img.width * (128 // img.width + 1),) * 2, Image.Resampling.NEAREST)
                img.save(tmp / _safe_name(name))
                previews.append(_safe_name(name))
            manifest = {
                "format": FORMAT, "version": VERSION, "num_patches": len(self),
                "patch_size": self.patch_size, "channels": int(self.patches.shape[-1]),
                "image_shape": list(self.image_shape), "class_names": self.class_names,
                "targets": [int(t) for t in self.targets], "settings": self.settings,
                "metrics": self.metrics, "previews": previews,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))

    @classmethod
    def load(cls, path: PathLike) -> "PatchSet":
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise PatchSetError(f"{path} is not a patch set: {MANIFEST} is missing")

        def parse(meta: Dict[str, Any]
                  ) -> Tuple[List[str], Tuple[int, ...], Dict[str, Any], List[Dict[str, float]]]:
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise PatchSetError(f"{path / MANIFEST} is not an {FORMAT} v{VERSION} manifest")
            return ([str(c) for c in meta["class_names"]], tuple(int(d) for d in meta["image_shape"]),
                    dict(meta.get("settings", {})), [dict(m) for m in meta.get("metrics", [])])

        class_names, image_shape, settings, metrics = read_manifest(path / MANIFEST, PatchSetError,
                                                                    "patch-set manifest", parse)
        arrays = read_arrays(path / ARRAYS, ["patches", "masks", "targets"], PatchSetError)
        patches, masks, targets = arrays["patches"], arrays["masks"], arrays["targets"]
        k = len(targets) if targets.ndim == 1 else 0  # a 0-d array has no len() (make fuzz found it)
        ok = (len(image_shape) == 3 and patches.ndim == 4 and k >= 1 and patches.shape[0] == k
              and patches.shape[1] == patches.shape[2] and 1 <= patches.shape[1] <= min(image_shape[:2])
              and patches.shape[3] == image_shape[2] and masks.shape == patches.shape[:3] and targets.ndim == 1
              and patches.dtype.kind == "f" and masks.dtype.kind == "f" and targets.dtype.kind in "iu")
        if not ok:
            raise PatchSetError(f"{path / ARRAYS} does not hold patches for {list(image_shape)} images: patches "
                                f"{patches.dtype} {list(patches.shape)}, masks {masks.dtype} {list(masks.shape)}, "
                                f"targets {targets.dtype} {list(targets.shape)}")
        if not (np.isfinite(patches).all() and np.isfinite(masks).all() and 0 <= patches.min() <= patches.max() <= 1
                and 0 <= masks.min() <= masks.max() <= 1 and targets.min() >= 0 and targets.max() < len(class_names)):
            raise PatchSetError(f"{path / ARRAYS}: pixels and masks must be finite and in [0, 1], targets classes "
                                f"of the {len(class_names)}")
        return cls(patches.astype(np.float32), masks.astype(np.float32), targets.astype(np.int32), class_names,
                   cast(Tuple[int, int, int], image_shape), settings, metrics)  # three: checked above


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _windows(placements: Placements, image_hw: Tuple[int, int], size: int = 0, *, patch_size: int = 0,
             mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Per image, the top-left corner of a window that holds everything its patch touches, and the
    window's size: the largest any image of the batch needs (or ``size``, when that is larger), at
    most the image. What a patch touches: the box around its ``mask`` ([P, P]; ``None``: the whole
    square) rotated, plus what the bilinear read reaches beyond the mask's last pixels (half a patch
    pixel, in image pixels: more than one when a ``patch_size``-pixel patch is enlarged) and a
    pixel. A disk's window is the disk's box at any angle (a square's grows by up to 41%)."""
    h, w = image_hw
    side = placements.scale.astype(np.float64) * min(h, w)
    half_x, half_y = half_extents(mask_outline(mask), side, np.deg2rad(placements.angle.astype(np.float64)))
    reach = 0.5 * side / patch_size + 1.0 if patch_size else 1.0
    size_x, size_y = ((int(np.ceil(2 * (half + reach).max())) + 1 if len(half) else 1) for half in (half_x, half_y))
    wh, ww = min(h, max(size, size_y)), min(w, max(size, size_x))
    oy = np.clip(np.floor(placements.y - (wh - 1) / 2), 0, h - wh).astype(np.int64)
    ox = np.clip(np.floor(placements.x - (ww - 1) / 2), 0, w - ww).astype(np.int64)
    return oy, ox, wh, ww


def apply_patches(
    images: np.ndarray,
    patch_set: PatchSet,
    patch_index: np.ndarray,
    placements: Placements,
    batch_size: int = 1024,
    n_workers: int = 0,
    out: Optional[np.ndarray] = None,
    record: Optional[Callable[..., None]] = None,
) -> np.ndarray:
    """Apply ``patch_set.patches[patch_index[i]]`` at ``placements[i]`` to uint8 ``images[i]``.

    Needs only the patch set: no model, no attack object. Returns uint8 images. The warp and blend
    run on a window around each patch (the same transform, shifted), not the whole image: at scale
    0.4 that is about a quarter of the pixels, and only the pixels its mask covers are read and
    written. Pixels outside the window are copied unchanged. In NumPy on threads
    (:mod:`~advpatch.patches.paste`), the bytes TensorFlow's warp gave. ``batch_size`` is kept for
    callers; the work goes in chunks of bounded memory whatever it is. ``out``: where the patched
    images go (``images`` itself patches them in place; default a copy). ``record``: as
    :func:`~advpatch.patches.paste.paste_masked`'s (each chunk's sums of the bytes it changed).
    """
    from advpatch.patches.paste import padded, paste_masked

    if images.shape[-1] != patch_set.patches.shape[-1]:
        raise PatchSetError(
            f"the patches have {patch_set.patches.shape[-1]} channels but the images have {images.shape[-1]}"
        )
    hw = images.shape[1:3]
    out = images.copy() if out is None else out
    if not len(images):
        return out
    flat, side = padded(patch_set.canvases())  # each patch and its mask, read together
    # the windows hold any patch of the set: the union of the masks
    oy, ox, wh, ww = _windows(placements, hw, patch_size=patch_set.patch_size, mask=patch_set.masks.max(axis=0))
    # each window pixel read at its image coordinates, as TensorFlow's warp of the whole image reads it
    # (a transform shifted to the window rounds differently with the window's place, which a batch's
    # largest patch sets: the bytes then changed with the batches)
    rows = transforms(placements, patch_set.patch_size, hw)
    paste_masked(images, out, oy, ox, wh, ww, rows, flat, side, np.asarray(patch_index, np.intp), None,
                 origin=True, n_workers=n_workers, record=record)
    return out


def check_fits(patch_set: PatchSet, image_shape: Sequence[int], num_classes: int) -> None:
    """The patch set against a dataset: channels and class count."""
    c = image_shape[-1]
    if patch_set.patches.shape[-1] != c:
        raise PatchSetError(f"the patches have {patch_set.patches.shape[-1]} channels but the dataset's images "
                            f"have {c}")
    if len(patch_set.class_names) != num_classes:
        raise PatchSetError(f"the patches target a {len(patch_set.class_names)}-class model but the dataset has "
                            f"{num_classes} classes")


class Deployed(NamedTuple):
    """What :func:`deploy` did: how many images it patched, the distances between each patched
    image and its original, and with a worst-case search, per patched image (in order) whether its
    placement makes the model say the target (else None)."""

    num_patched: int
    distances: Dict[str, np.ndarray]
    won: Optional[np.ndarray] = None
    chosen: Optional[np.ndarray] = None  # which of all the images get a patch


def deploy(dataset: Dataset, patch_set: PatchSet, writer: DatasetWriter, *, method: str, application_rate: float,
           patch_scale: float, placement: Dict[str, Any], batch_size: int, rng: np.random.Generator,
           search: Optional[Search] = None, start: int = 0, stop: Optional[int] = None, block: int = 0) -> Deployed:
    """Put patches on ``dataset`` into ``writer`` (a DatasetWriter with :data:`PATCH_COLUMNS`).

    Exactly ``round(application_rate * n)`` images (drawn from ``rng``) get a patch, each a patch of
    the set drawn at random, at ``patch_scale`` (0: a scale drawn from the placement's range), at a
    placement from ``placement`` (``rotation_max``, ``scale_min``, ``scale_max``, ``location``).
    ``corrupt`` replaces those images; ``augment`` keeps every original and adds the patched copies
    after each batch's originals.

    A placement-conditioned set (:mod:`~advpatch.patches.conditioned`) gives each image, of the set
    drawn for it, the patch (or canvas) its placement picks; ``patch_index`` records that entry.
    ``search`` (a :class:`~advpatch.patches.worst_case.Search`) replaces each drawn position and
    rotation by the worst case for the model (:func:`~advpatch.patches.worst_case.search_placements`);
    the scale stays as drawn. ``start:stop``: only those images are written (a shard), each patched as
    when all are (every draw is made for all of them, and the batches are the whole's).

    ``block`` (> 0): with ``corrupt`` and no search, where the batches change no byte (every draw is
    made before, each image is patched alone), the images are read and patched ``block`` at a time
    instead, each block inside one input shard (its rows as read, patched in place: never copied,
    :meth:`~advpatch.data.dataset.Dataset.blocks`), and a shard reads only its own rows.
    """
    from advpatch.patches.conditioned import entries, num_sets

    n = len(dataset)
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: round(application_rate * n)]] = True
    which = rng.integers(0, num_sets(patch_set), n).astype(np.int16)
    # every patch of the set must fit where its image's placement puts it: the union of the masks
    where = sample_placements(rng, n, dataset.image_shape[:2], patch_scale=patch_scale,
                              mask=patch_set.masks.max(axis=0), **placement)
    index = which.copy()  # the entry each image gets (a conditioned set's cell is known once placed)
    distances: Dict[str, List[np.ndarray]] = {}
    won: List[np.ndarray] = []
    stop = n if stop is None else stop
    if block > 0 and search is None and method == "corrupt":  # blocks: the shards' rows as read, no copy
        at, batches = start, dataset.blocks(block, start, stop)
    else:  # the whole's batches around the shard are patched whole, then cut
        at, end = start // batch_size * batch_size, min(n, -(-stop // batch_size) * batch_size)
        batches = dataset.batches(batch_size, at, end)
    for batch in batches:
        x, y = batch["x"], batch["y"]
        idx = np.arange(at, at + len(y))
        at += len(y)
        sel = idx[chosen[idx]]
        mine = (sel >= start) & (sel < stop)
        patched = x[:0]
        if len(sel):
            if search is not None:
                found = search.find(x[sel - idx[0]], y[sel - idx[0]], patch_set, which[sel], where.scale[sel],
                                    placement["location"], batch_size)
                for f in ("angle", "x", "y"):
                    getattr(where, f)[sel] = getattr(found.placements, f)
                won.append(found.won[mine])
            index[sel] = entries(patch_set, which[sel], where.take(sel))
            whole = method == "corrupt" and len(sel) == len(x) and x.flags.writeable and x.flags.c_contiguous
            patched = x if whole else x[sel - idx[0]]  # every image of the batch: the batch itself, patched in place
            for k, v in _patch_measured(patched, patch_set, which[sel], where.take(sel), batch_size).items():
                distances.setdefault(k, []).append(v[mine])
        keep = (idx >= start) & (idx < stop)
        if method == "corrupt":
            x = x if x.flags.writeable else x.copy()
            if patched is not x:
                x[sel - idx[0]] = patched  # the batch is this loop's own
            if not keep.all():  # a shard: the whole's batch, cut
                x, y, idx = x[keep], y[keep], idx[keep]
            writer.write(x, y, **_provenance_columns(idx, chosen[idx], index, where, patch_set))
        else:  # augment: shards are whole batches (the originals, then their copies)
            writer.write(x, y, **_provenance_columns(idx, np.zeros(len(idx), bool), index, where, patch_set))
            if len(sel):
                writer.write(patched, y[sel - idx[0]],
                             **_provenance_columns(sel, np.ones(len(sel), bool), index, where, patch_set))
    return Deployed(int(chosen[start:stop].sum()), {k: np.concatenate(v) for k, v in distances.items()},
                    None if search is None else np.concatenate(won) if won else np.zeros(0, bool), chosen)


def _patch_measured(images: np.ndarray, patch_set: PatchSet, which: np.ndarray, placements: Placements,
                    batch_size: int) -> Dict[str, np.ndarray]:
    """Patch uint8 ``images`` in place (:func:`~advpatch.patches.conditioned.apply_set`) and return
    their exact distances to the clean images (:func:`~advpatch.evaluation.distance_stats`), from
    |x|^2 of each clean image and the sums of the bytes the paste changed (made as it pastes)."""
    from advpatch.evaluation import distances_of_sums
    from advpatch.patches.conditioned import apply_set

    squares = _squares(images)
    sums = np.zeros((len(images), 5), np.int64)

    def record(sl: slice, part: np.ndarray) -> None:
        sums[sl] = part

    apply_set(images, patch_set, which, placements, batch_size, out=images, record=record)
    return distances_of_sums(sums, squares, int(np.prod(images.shape[1:]))) if len(images) else {}


def _squares(images: np.ndarray) -> np.ndarray:
    """:func:`~advpatch.evaluation.squares_of` of uint8 ``images``, chunks on threads."""
    from advpatch.evaluation import squares_of
    from advpatch.parallel import in_parallel

    out = np.empty(len(images), np.int64)
    chunk = max(16, (1 << 20) // max(1, int(np.prod(images.shape[1:]))) // 16 * 16)

    def one(k: int) -> None:
        out[k * chunk:(k + 1) * chunk] = squares_of(images[k * chunk:(k + 1) * chunk])

    in_parallel(one, -(-len(images) // chunk))
    return out


def _provenance_columns(idx: np.ndarray, patched: np.ndarray, which: np.ndarray, where: Placements,
                        patch_set: PatchSet) -> Dict[str, np.ndarray]:
    nan = np.float32(np.nan)
    return {
        "patched": patched,
        "patch_index": np.where(patched, which[idx], -1).astype(np.int16),
        "patch_target": np.where(patched, patch_set.targets[which[idx]], -1).astype(np.int16),
        "patch_scale": np.where(patched, where.scale[idx], nan),
        "patch_angle": np.where(patched, where.angle[idx], nan),
        "patch_x": np.where(patched, where.x[idx], nan),
        "patch_y": np.where(patched, where.y[idx], nan),
        "source_index": idx.astype(np.int64),
    }
