"""Worst-case placement: the attacker, holding the model, picks where each image's patch goes.

Random placement measures a patch pasted wherever chance puts it; a defender's truth is the worst
case, where whoever pastes tries every position (on a ``stride``-pixel grid over the positions the
placement rules allow) at a few rotations, per image, against the model (with any defence in front
of it) and keeps one that makes the model say the target. :func:`search_placements` does that
search in batches; :func:`~advpatch.patches.patchset.deploy` uses it for ``deploy_patch``'s
``patch_placement="worst_case"``, and :func:`worst_case_success` is the figure the benchmarks
print. The scale is not searched: larger is always easier, so it stays what the deployment sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from advpatch.patches.geometry import Placements, half_extents, mask_outline

if TYPE_CHECKING:
    from advpatch.models.classifier import Classifier
    from advpatch.patches.patchset import PatchSet

Angles = Union[Sequence[float], np.ndarray]
"""Rotations in degrees: a sequence or an array of them (:func:`search_angles`)."""


def search_angles(rotation_max: float, count: int) -> np.ndarray:
    """``count`` rotations evenly spaced over [-rotation_max, rotation_max] (1: upright only)."""
    if count <= 1 or rotation_max <= 0:
        return np.zeros(1)
    return np.unique(np.linspace(-rotation_max, rotation_max, count))


def grid_placements(image_hw: Tuple[int, int], scale: float, *, stride: float = 2.0, angles: Angles = (0.0,),
                    mask: Optional[np.ndarray] = None, location: str = "random") -> Placements:
    """Every placement at ``scale`` whose centre lies on a ``stride``-pixel grid over the positions
    :func:`~advpatch.patches.sample_placements` can draw (``random``: the mask, rotated, wholly
    inside the image, the range's ends included; ``center``: the centre only), at each of
    ``angles``."""
    h, w = image_hw
    out = []
    for angle in angles:
        hx, hy = half_extents(mask_outline(mask), np.array([scale * min(h, w)]), np.deg2rad(np.array([angle])))
        rx, ry = (max(w / 2 - hx[0], 0.0), max(h / 2 - hy[0], 0.0)) if location == "random" else (0.0, 0.0)
        xs = (w - 1) / 2 + np.unique(np.concatenate([np.arange(-rx, rx, stride), [rx]]))
        ys = (h - 1) / 2 + np.unique(np.concatenate([np.arange(-ry, ry, stride), [ry]]))
        gx, gy = np.meshgrid(xs, ys)
        k = gx.size
        out.append(Placements(np.full(k, angle, np.float32), np.full(k, scale, np.float32),
                              gx.ravel().astype(np.float32), gy.ravel().astype(np.float32)))
    return Placements(*(np.concatenate([getattr(p, f) for p in out]) for f in ("angle", "scale", "x", "y")))


@dataclass
class WorstCase:
    """Per image: the placement chosen, whether it makes the model say the target (``won``),
    whether any placement tried makes the model wrong (``misclassified``), and how many placements
    were tried."""

    placements: Placements
    won: np.ndarray
    misclassified: np.ndarray
    tried: np.ndarray


def _segments(sizes: Sequence[int], batch: int) -> Iterator[List[Tuple[int, int, int]]]:
    """Chunks of at most ``batch`` rows over images with ``sizes`` rows each: lists of (image,
    first row, end row); an image with more rows than ``batch`` spans chunks."""
    chunk: List[Tuple[int, int, int]] = []
    room = batch
    for i, size in enumerate(sizes):
        lo = 0
        while lo < size:
            take = min(size - lo, room)
            chunk.append((i, lo, lo + take))
            lo += take
            room -= take
            if room == 0:
                yield chunk
                chunk, room = [], batch
    if chunk:
        yield chunk


def search_placements(classifier: Classifier, images: np.ndarray, labels: np.ndarray, patch_set: PatchSet,
                      set_index: np.ndarray, scales: np.ndarray, *, stride: float, angles: Angles,
                      location: str = "random", batch_size: int = 1024) -> WorstCase:
    """For each uint8 image, every placement of :func:`grid_placements` at its scale, its patch
    ``set_index[i]`` of ``patch_set`` (ordinary, or conditioned: the cell's entry) pasted there and
    the model's probabilities read (on the uint8 image deployment writes). The choice: among the
    placements the model calls the target, the one it is surest of; when none, the one that lowers
    the true class's probability most. ``batch_size`` patched images at a time."""
    from advpatch.data.dataset import to_float
    from advpatch.patches.conditioned import apply_set

    n = len(images)
    mask = patch_set.masks.max(axis=0)
    targets = patch_set.targets[_first_entries(patch_set, set_index)]
    grids: Dict[float, Placements] = {}
    per_image = []
    for s in np.asarray(scales, np.float32):
        if float(s) not in grids:
            grids[float(s)] = grid_placements(images.shape[1:3], float(s), stride=stride, angles=angles, mask=mask,
                                              location=location)
        per_image.append(grids[float(s)])
    best_win = np.full(n, -np.inf)
    best_lose = np.full(n, np.inf)
    choice = np.zeros((n, 2), np.int64)  # (won?, index into the image's grid)
    wrong = np.zeros(n, bool)
    for chunk in _segments([len(g) for g in per_image], batch_size):
        where = Placements(*(np.concatenate([getattr(per_image[i], f)[lo:hi] for i, lo, hi in chunk])
                             for f in ("angle", "scale", "x", "y")))
        owner = np.concatenate([np.full(hi - lo, i) for i, lo, hi in chunk])
        patched = apply_set(images[owner], patch_set, np.asarray(set_index)[owner], where, batch_size)
        probs = classifier.predict(to_float(patched), batch_size)
        rows = np.arange(len(owner))
        p_target, p_true = probs[rows, targets[owner]], probs[rows, labels[owner]]
        hit = probs.argmax(axis=1) == targets[owner]
        start = 0
        for i, lo, hi in chunk:
            sl = slice(start, start + hi - lo)
            start += hi - lo
            wrong[i] |= bool((probs[sl].argmax(axis=1) != labels[i]).any())
            if hit[sl].any():
                k = int(np.argmax(np.where(hit[sl], p_target[sl], -np.inf)))
                if p_target[sl][k] > best_win[i]:
                    best_win[i], choice[i] = p_target[sl][k], (1, lo + k)
            elif not np.isfinite(best_win[i]):
                k = int(np.argmin(p_true[sl]))
                if p_true[sl][k] < best_lose[i]:
                    best_lose[i], choice[i] = p_true[sl][k], (0, lo + k)
    chosen = [per_image[i].take(slice(int(choice[i, 1]), int(choice[i, 1]) + 1)) for i in range(n)]
    placements = Placements(*(np.concatenate([getattr(c, f) for c in chosen]) if n else np.zeros(0, np.float32)
                              for f in ("angle", "scale", "x", "y")))
    return WorstCase(placements, choice[:, 0].astype(bool), wrong, np.array([len(g) for g in per_image]))


@dataclass
class Search:
    """The worst-case search :func:`~advpatch.patches.patchset.deploy` runs: against
    ``classifier`` (a :class:`~advpatch.models.classifier.Classifier`, with any defence in front),
    positions every ``stride`` pixels, at each of ``angles``."""

    classifier: Classifier
    stride: float
    angles: Angles

    def find(self, images: np.ndarray, labels: np.ndarray, patch_set: PatchSet, set_index: np.ndarray,
             scales: np.ndarray, location: str, batch_size: int) -> WorstCase:
        return search_placements(self.classifier, images, labels, patch_set, set_index, scales, stride=self.stride,
                                 angles=self.angles, location=location, batch_size=batch_size)


def _first_entries(patch_set: PatchSet, set_index: np.ndarray) -> np.ndarray:
    """The first entry of each image's set (every entry of a conditioned set has its target)."""
    from advpatch.patches.conditioned import conditioning_of

    cond = conditioning_of(patch_set)
    return np.asarray(set_index, np.int64) * (cond.num_cells if cond else 1)


def worst_case_success(classifier: Classifier, images: np.ndarray, labels: np.ndarray, patch_set: PatchSet,
                       scale: float, *, stride: float = 2.0, angles: Angles = (0.0,), set_index: int = 0,
                       batch_size: int = 4096) -> Dict[str, Any]:
    """The worst-case figure of one patch (or conditioned set) ``set_index`` at ``scale``: over the
    uint8 images whose label is not its target, the share for which some placement of
    :func:`grid_placements` makes the model say the target (``successes`` of ``images``), and the
    share some placement misclassifies."""
    target = int(patch_set.targets[_first_entries(patch_set, np.array([set_index]))[0]])
    eligible = np.flatnonzero(labels != target)
    found = search_placements(classifier, images[eligible], labels[eligible], patch_set,
                              np.full(len(eligible), set_index), np.full(len(eligible), scale), stride=stride,
                              angles=angles, batch_size=batch_size)
    return {"scale": float(scale), "stride": float(stride), "angles": [float(a) for a in angles],
            "placements_per_image": int(found.tried[0]) if len(eligible) else 0, "images": len(eligible),
            "successes": int(found.won.sum()), "misclassified": int(found.misclassified.sum()),
            "worst_case_targeted_success_rate": float(found.won.mean()) if len(eligible) else float("nan"),
            "worst_case_misclassified_rate": float(found.misclassified.mean()) if len(eligible) else float("nan")}
