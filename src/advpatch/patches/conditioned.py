"""Placement-conditioned patch sets: what deployment pastes is a fixed function of the placement.

:func:`~advpatch.patches.patchset.deploy` draws each image's placement itself (position, rotation,
scale), so the patch it pastes may be any fixed function of that placement without giving the
attack anything at deployment time: no model, no image. Two such sets, trained by the same
expectation over transformation and the same budget as :func:`~advpatch.patches.generate_patch`
(one model evaluation per patched image per step):

* ``grid``: ``columns x rows`` ordinary patches, one per cell of a grid over the image, by where
  the patch's centre falls; deployment pastes the patch of its placement's cell. All cells train
  together in one run: each patched image's gradient goes to its cell's patch.
* ``canvas``: one image-sized canvas aligned with the image; a placement shows the canvas through
  the patch's mask where the mask lands, whatever its rotation. The limit of ``grid`` with one cell
  per pixel: it draws the target's strokes where they belong in the frame, which a patch that must
  work at every position cannot.

Threat model: this fits data corruption through ``deploy_patch`` (whoever pastes knows where), not
a sticker printed once and put anywhere: a printed canvas is only right where it was trained for.

A conditioned set is saved as an ordinary :class:`~advpatch.patches.PatchSet` whose settings hold
``conditioning`` (:meth:`Conditioning.to_dict`); its entries are ``num_sets`` blocks of
:attr:`Conditioning.num_cells` (one block per target), so entry ``set * num_cells + cell``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np

from advpatch import params
from advpatch.patches.geometry import Placements, Tensor, inverse_transforms, sample_placements, transforms, warp
from advpatch.patches.optimizer import PatchOptimizer, learning_rates
from advpatch.patches.patchset import PatchSet, apply_patches

if TYPE_CHECKING:
    from advpatch.models.classifier import Classifier

MODES = ("grid", "canvas")


@dataclass(frozen=True)
class Conditioning:
    """Which entry of a set a placement gets: ``mode`` (``grid`` or ``canvas``) and ``grid``
    (columns, rows) of equal cells over the image, by the patch centre (a canvas set has one canvas
    per cell; one cell is what gen_patch makes)."""

    mode: str = "grid"
    grid: Tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        params.require(self.mode in MODES, f"conditioning mode must be one of {', '.join(map(repr, MODES))}, "
                                           f"got {self.mode!r}")
        params.require(len(self.grid) == 2 and min(self.grid) >= 1,
                       f"the conditioning grid must be two counts >= 1, got {list(self.grid)}")

    @property
    def num_cells(self) -> int:
        return int(self.grid[0] * self.grid[1])

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "grid": [int(g) for g in self.grid]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Conditioning":
        grid = d.get("grid", (1, 1))
        params.require(isinstance(grid, (list, tuple)) and len(grid) == 2,
                       f"a patch set's conditioning grid must be [columns, rows], got {grid!r}")
        return cls(str(d.get("mode", "grid")), (int(grid[0]), int(grid[1])))

    def cells(self, placements: Placements, image_hw: Tuple[int, int]) -> np.ndarray:
        """[n] int32: each placement's cell (row-major), a function of its centre alone."""
        h, w = image_hw
        gx, gy = self.grid
        cx = np.clip(np.floor((placements.x.astype(np.float64) + 0.5) / w * gx), 0, gx - 1)
        cy = np.clip(np.floor((placements.y.astype(np.float64) + 0.5) / h * gy), 0, gy - 1)
        out: np.ndarray = (cy * gx + cx).astype(np.int32)
        return out


def conditioning_of(patch_set: PatchSet) -> Optional[Conditioning]:
    """The set's conditioning (``settings["conditioning"]``), or None for an ordinary set."""
    d = (patch_set.settings or {}).get("conditioning")
    if not d:
        return None
    cond = Conditioning.from_dict(d)
    if len(patch_set) % cond.num_cells or (cond.mode == "canvas" and (
            patch_set.patch_size != patch_set.image_shape[0] or patch_set.image_shape[0] != patch_set.image_shape[1])):
        from advpatch.errors import PatchSetError

        raise PatchSetError(f"the patch set's {len(patch_set)} patches of {patch_set.patch_size} pixels do not make "
                            f"{cond.mode} sets of {cond.num_cells} cells for {list(patch_set.image_shape)} images")
    return cond


def entries(patch_set: PatchSet, set_index: np.ndarray, placements: Placements) -> np.ndarray:
    """[n] the entry each image gets: its drawn patch (ordinary set) or, in its drawn set, the cell
    of its placement (conditioned set)."""
    cond = conditioning_of(patch_set)
    if cond is None:
        return np.asarray(set_index)
    cells = cond.cells(placements, patch_set.image_shape[:2])
    index: np.ndarray = (np.asarray(set_index, np.int64) * cond.num_cells + cells).astype(np.asarray(set_index).dtype)
    return index


def num_sets(patch_set: PatchSet) -> int:
    """How many patches (ordinary) or conditioned sets (one per target) the patch set holds."""
    cond = conditioning_of(patch_set)
    return len(patch_set) // (cond.num_cells if cond else 1)


def apply_set(images: np.ndarray, patch_set: PatchSet, set_index: np.ndarray, placements: Placements,
              batch_size: int = 1024, out: Optional[np.ndarray] = None,
              record: Optional[Callable[..., None]] = None) -> np.ndarray:
    """Patched uint8 ``images``: each with patch ``set_index[i]`` (ordinary set: exactly
    :func:`apply_patches`) or, conditioned, the entry of its set its placement picks. ``out`` and
    ``record``: as :func:`apply_patches`'s."""
    cond = conditioning_of(patch_set)
    index = entries(patch_set, set_index, placements)
    if cond is not None and cond.mode == "canvas":
        return apply_canvas(images, patch_set.patches, patch_set.masks[0], index, placements, batch_size, out=out,
                            record=record)
    return apply_patches(images, patch_set, index, placements, batch_size, out=out, record=record)


def apply_canvas(images: np.ndarray, canvases: np.ndarray, mask: np.ndarray, index: np.ndarray,
                 placements: Placements, batch_size: int = 256, n_workers: int = 0,
                 out: Optional[np.ndarray] = None, record: Optional[Callable[..., None]] = None) -> np.ndarray:
    """uint8 ``images`` each showing canvas ``canvases[index[i]]`` ([H, W, C], image-aligned)
    through ``mask`` ([H, H]) warped to ``placements[i]``; rounding as :func:`apply_patches`. Only
    the window around each warped mask is computed (outside it the mask is 0: the image is kept)."""
    from advpatch.patches.paste import padded, paste_masked
    from advpatch.patches.patchset import _windows

    hw = images.shape[1:3]
    out = images.copy() if out is None else out
    if not len(images):
        return out
    flat, side = padded(np.asarray(mask, np.float32)[None, ..., None])
    rows = transforms(placements, mask.shape[0], hw)  # image coordinates, as TensorFlow warped the whole image
    oy, ox, wh, ww = _windows(placements, hw, patch_size=mask.shape[0], mask=mask)
    canvases = np.asarray(canvases, np.float32)
    index = np.asarray(index, np.intp)

    def pixels(sl: slice, image: np.ndarray, i: np.ndarray, j: np.ndarray, x: np.ndarray, y: np.ndarray
               ) -> np.ndarray:  # the canvas's own pixel under each point, [C, m]
        under: np.ndarray = canvases[index[sl][image], oy[sl][image] + i, ox[sl][image] + j].T
        return under

    paste_masked(images, out, oy, ox, wh, ww, rows, flat, side, np.zeros(len(images), np.intp), pixels, origin=True,
                 divide=True, n_workers=n_workers, record=record)
    return out


def _overlay_cells(images: Tensor, patches: Tensor, mask: Tensor, cells: Tensor, rows: Tensor,
                   inverse_rows: Tensor) -> Tensor:
    """:func:`~advpatch.patches.optimizer.overlay_for_training` with each image's own cell's patch
    (``patches`` [k, P, P, C]); each cell's patch gets the gradient of its images."""
    import tensorflow as tf

    batch = tf.shape(images)[:1]
    hw = tf.shape(images)[1:3]
    k = tf.shape(patches)[0]
    warped_mask = warp(tf.broadcast_to(mask[None], tf.concat([batch, tf.shape(mask)], 0)), rows, hw)

    @tf.custom_gradient
    def _overlay(patches: Tensor) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
        warped = warp(tf.gather(patches, cells), rows, hw)

        def grad(upstream: Tensor) -> Tensor:
            back = warp(upstream * warped_mask, inverse_rows, tf.shape(patches)[1:3])
            return tf.math.unsorted_segment_sum(back, cells, k)

        return images + warped_mask * (warped - images), grad

    return _overlay(patches)


def _overlay_canvas(images: Tensor, canvases: Tensor, mask: Tensor, cells: Tensor, rows: Tensor) -> Tensor:
    """Each image shows its cell's canvas ([k, H, W, C]) through the warped mask."""
    import tensorflow as tf

    batch = tf.shape(images)[:1]
    warped_mask = warp(tf.broadcast_to(mask[None], tf.concat([batch, tf.shape(mask)], 0)), rows,
                       tf.shape(images)[1:3])
    return images + warped_mask * (tf.gather(canvases, cells) - images)


class ConditionedPatchOptimizer(PatchOptimizer):
    """Optimizes one conditioned set (``conditioning.num_cells`` patches, or image-sized canvases)
    in one compiled loop: Adam, objective and schedule as :class:`PatchOptimizer`. A canvas set's
    ``mask`` is image-sized (its ``patch_size`` is the image's side)."""

    def __init__(self, classifier: Classifier, image_shape: Sequence[int], patch_size: int, mask: np.ndarray,
                 learning_rate: float, conditioning: Conditioning, *, lr_decay: float = 0.3,
                 loss: str = "combined") -> None:
        import tensorflow as tf

        h, w = image_shape[:2]
        if conditioning.mode == "canvas":
            params.require(h == w, f"a canvas patch set needs square images, got {h}x{w}")
            params.require(patch_size == h and np.shape(mask) == (h, w),
                           f"a canvas and its mask are image-sized, {h}x{w}; got {patch_size} and {np.shape(mask)}")
        super().__init__(classifier, image_shape, patch_size, mask, learning_rate, lr_decay=lr_decay, loss=loss)
        self.conditioning = conditioning
        shape = (conditioning.num_cells, self.patch_size, self.patch_size, self.channels)
        self.patch = tf.Variable(tf.zeros(shape), name="patches")
        self._m = tf.Variable(tf.zeros_like(self.patch))
        self._v = tf.Variable(tf.zeros_like(self.patch))
        signature = [
            tf.TensorSpec([None, *self.image_shape], tf.float32),
            tf.TensorSpec([None, None], tf.int32),  # images of each step
            tf.TensorSpec([None, None], tf.int32),  # the cell of each image of each step
            tf.TensorSpec([None, None, 8], tf.float32),
            tf.TensorSpec([None, None, 8], tf.float32),
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([], tf.int32),
        ]
        self.run = tf.function(self._run_cells, input_signature=signature)

    def _step_cells(self, x: Tensor, cells: Tensor, rows: Tensor, inverse_rows: Tensor, weights: Tensor,
                    rate: Tensor, target: Tensor) -> Tensor:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            if self.conditioning.mode == "canvas":
                patched = _overlay_canvas(x, self.patch, self.mask, cells, rows)
            else:
                patched = _overlay_cells(x, self.patch, self.mask, cells, rows, inverse_rows)
            loss, mean_ce = self._objective(self.net(patched), weights, target)
        self._update(tape.gradient(loss, self.patch), rate)
        return mean_ce

    def _run_cells(self, x: Tensor, index: Tensor, cells: Tensor, rows: Tensor, inverse_rows: Tensor,
                   weights: Tensor, rates: Tensor, target: Tensor) -> Tensor:
        import tensorflow as tf

        steps = tf.shape(index)[0]
        losses = tf.TensorArray(tf.float32, size=steps)
        for s in tf.range(steps):
            loss = self._step_cells(tf.gather(x, index[s]), cells[s], rows[s], inverse_rows[s], weights[s], rates[s],
                                    target)
            losses = losses.write(s, loss)
        return losses.stack()


def generate_conditioned_patch(
    optimizer: ConditionedPatchOptimizer,
    x: np.ndarray,
    target: int,
    *,
    max_iter: int,
    batch_size: int,
    rotation_max: float,
    scale_min: float,
    scale_max: float,
    location: str,
    rng: np.random.Generator,
) -> Tuple[np.ndarray, List[float]]:
    """Optimize one conditioned set towards ``target``: :func:`~advpatch.patches.generate_patch`'s
    schedule (``max_iter`` shuffled passes over ``x`` in batches of ``batch_size``, one placement per
    image per step, drawn the same way from ``rng``: the same model evaluations), each patched image
    with its placement's cell. A 1x1 grid is ``generate_patch`` itself. Returns the set [cells, P,
    P, C] and each pass's mean cross-entropy."""
    import tensorflow as tf

    n = len(x)
    batch = min(batch_size, n)
    per_pass = math.ceil(n / batch)
    width = per_pass * batch
    index = np.empty((max_iter, width), dtype=np.int32)
    weights = np.zeros((max_iter, width), dtype=np.float32)
    for i in range(max_iter):
        order = rng.permutation(n)
        index[i, :n], weights[i, :n] = order, 1.0
        index[i, n:] = order[: width - n]
    hw = cast(Tuple[int, int], optimizer.image_shape[:2])
    where = sample_placements(rng, index.size, hw, rotation_max=rotation_max, scale_min=scale_min,
                              scale_max=scale_max, location=location, mask=optimizer.mask_array)
    cells = optimizer.conditioning.cells(where, hw)
    rows = transforms(where, optimizer.patch_size, hw)
    inverse_rows = inverse_transforms(where, optimizer.patch_size, hw)
    optimizer.reset(np.full(tuple(optimizer.patch.shape), 0.5, np.float32))
    losses = optimizer.run(
        tf.constant(x, tf.float32),
        tf.constant(index.reshape(-1, batch)),
        tf.constant(cells.reshape(-1, batch)),
        tf.constant(rows.reshape(-1, batch, 8)),
        tf.constant(inverse_rows.reshape(-1, batch, 8)),
        tf.constant(weights.reshape(-1, batch)),
        tf.constant(learning_rates(optimizer.learning_rate, max_iter * per_pass, optimizer.lr_decay)),
        tf.constant(target, tf.int32),
    ).numpy()
    step_weight = weights.reshape(-1, batch).sum(axis=1)
    per_pass_loss = (losses * step_weight).reshape(max_iter, per_pass).sum(axis=1) / n
    return optimizer.patch.numpy(), [float(v) for v in per_pass_loss]


def preview(patch_set: PatchSet, set_index: int) -> np.ndarray:
    """One RGBA uint8 picture of a set: an ordinary patch, a canvas, or a grid's patches tiled in
    their cells' layout."""
    cond = conditioning_of(patch_set)
    if cond is None:
        return patch_set.rgba(set_index)
    first = set_index * cond.num_cells
    tiles = [patch_set.rgba(first + c) for c in range(cond.num_cells)]
    gx, gy = cond.grid
    return np.concatenate([np.concatenate(tiles[r * gx:(r + 1) * gx], axis=1) for r in range(gy)], axis=0)


def for_images(mode: str, grid_size: int, image_shape: Sequence[int], patch_size: int
               ) -> Tuple[Optional[Conditioning], int]:
    """gen_patch's ``patch_conditioning`` and ``patch_grid_size`` for images of ``image_shape``:
    the conditioning (None for ``none``) and the patch side (``patch_size``, 0: the image's shorter
    side; a canvas is image-sized, so only 0 or that side)."""
    h, w = image_shape[:2]
    if mode == "none":
        return None, patch_size or min(h, w)
    if mode == "canvas":
        params.require(h == w, f"patch_conditioning='canvas' needs square images, got {h}x{w}: resize them "
                               f"(load_dataset's image_size) or use 'grid'")
        params.require(patch_size in (0, h), f"patch_conditioning='canvas' is image-sized: patch_size must be 0 or "
                                             f"{h}, got {patch_size}")
        return Conditioning("canvas"), h
    params.require(mode == "grid", f"patch_conditioning must be one of 'none', 'canvas', 'grid', got {mode!r}")
    return Conditioning("grid", (grid_size, grid_size)), patch_size or min(h, w)
