"""Certified patch robustness: PatchCleanser's double masking (Xiang, Mahloujifar and Mittal, USENIX
Security 2022), around any Keras classifier.

A *mask set* for patches of side ``p``: along each axis of length ``n``, ``k`` (``masks_per_side``)
windows of side ``m = p + s - 1`` at stride ``s = ceil((n - p + 1) / k)``, the last one flush with
the far edge, so that every run of ``p`` pixels lies inside one window; the masks are the ``k x k``
squares they make. Whatever the patch's position, some mask *covers* it. A masked pixel is set to
:data:`FILL` (mid-grey on [0, 1] pixels).

Double masking (the paper's Algorithm 1): classify the image under every mask (first round). If
every prediction agrees, that is the answer. Otherwise, for each mask whose prediction disagrees
with the majority (in mask order), classify the image under that mask and every other one (second
round): if all agree with it, that is the answer. Failing that, the majority.

The prediction ``c`` is certified against every patch of side ``p`` when the image is classified
``c`` under every pair of masks (a mask twice: under one). Then a mask covering the patch sees no
patch pixel, and every pair that includes it sees the clean image: whatever the other predictions
are, that mask is a disagreer whose second round is unanimous, or the majority is ``c``, and no
other mask's second round can be unanimous for another class. :func:`worst_case_flips` checks
certificates independently: it recomputes the pair predictions, finds each patch position's
covering masks from the masks' pixels, lets the patch set every prediction no covering mask
protects, and runs the same decision.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, List, Optional, Sequence, Tuple

import numpy as np

from advpatch import params
from advpatch.defences.smoothing import History, Tensor, fit_views
from advpatch.errors import CertifiedError

FILL = 0.5
"""The value of a masked pixel (images on [0, 1])."""


def windows(n: int, patch_size: int, masks_per_side: int) -> Tuple[int, List[int]]:
    """Along an axis of ``n`` pixels: the masks' side and their offsets (see the module's text)."""
    if not 1 <= patch_size <= n:
        raise CertifiedError(f"patch size must be in [1, {n}] for an axis of {n} pixels, got {patch_size}")
    if not 1 <= masks_per_side <= n - patch_size + 1:
        raise CertifiedError(f"masks_per_side must be in [1, {n - patch_size + 1}] for {patch_size}-pixel patches "
                             f"on {n} pixels, got {masks_per_side}")
    stride = -(-(n - patch_size + 1) // masks_per_side)
    side = patch_size + stride - 1
    starts = list(range(0, n - side + 1, stride))
    if starts[-1] != n - side:
        starts.append(n - side)
    return side, starts


def masks_at(image_hw: Tuple[int, int], rows: Tuple[int, Sequence[int]], cols: Tuple[int, Sequence[int]]) -> np.ndarray:
    """The masks [K, H, W] (True: masked) of a grid: ``rows`` and ``cols`` are (side, offsets)."""
    (h_side, tops), (w_side, lefts) = rows, cols
    out = np.zeros((len(tops) * len(lefts), *image_hw), bool)
    for i, (top, left) in enumerate((t, lf) for t in tops for lf in lefts):
        out[i, top:top + h_side, left:left + w_side] = True
    return out


def mask_set(image_hw: Tuple[int, int], patch_size: int, masks_per_side: int) -> np.ndarray:
    """The mask set [K, H, W] for square patches of side ``patch_size`` (``K = masks_per_side^2``
    at most)."""
    h, w = image_hw
    return masks_at(image_hw, windows(h, patch_size, masks_per_side), windows(w, patch_size, masks_per_side))


def apply(x: np.ndarray, mask: np.ndarray, fill: float = FILL) -> np.ndarray:
    """Float images [n, H, W, C] with ``mask`` ([H, W], or one per image [n, H, W]) set to ``fill``."""
    masked: np.ndarray = np.where(np.broadcast_to(mask, x.shape[:3])[..., None], np.asarray(fill, x.dtype), x)
    return masked


class MaskedClassifier:
    """A Keras classifier's predicted class under masks: :meth:`classify` takes (image, mask, mask)
    triples, many to a forward pass."""

    def __init__(self, model: Any, x: np.ndarray, masks: np.ndarray, batch_size: int = 2048) -> None:
        self.model, self.x, self.masks, self.batch_size = model, x, masks, batch_size
        self.forward_passes = 0

    def classify(self, image: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Image ``image[t]`` under masks ``a[t]`` and ``b[t]`` (the same twice: one mask)."""
        out = np.empty(len(image), np.int64)
        for s in range(0, len(image), self.batch_size):
            part = slice(s, s + self.batch_size)
            views = apply(self.x[image[part]], self.masks[a[part]] | self.masks[b[part]])
            out[part] = np.argmax(np.asarray(self.model.predict_on_batch(views)), axis=1)
            self.forward_passes += len(views)
        return out

    def first_round(self, images: np.ndarray) -> np.ndarray:
        """[len(images), K]: each image under each mask."""
        k = len(self.masks)
        every = np.repeat(images, k), np.tile(np.arange(k), len(images))
        return self.classify(every[0], every[1], every[1]).reshape(len(images), k)

    def second_round(self, mask: int, images: np.ndarray) -> np.ndarray:
        """[len(images), K]: each image under ``mask`` and each mask."""
        k = len(self.masks)
        return self.classify(np.repeat(images, k), np.full(len(images) * k, mask),
                             np.tile(np.arange(k), len(images))).reshape(len(images), k)


def majority(first: np.ndarray, num_classes: int) -> np.ndarray:
    """The most frequent prediction of each row of ``first`` [n, K] (ties: the smaller class)."""
    counts = (first[..., None] == np.arange(num_classes)).sum(axis=1)
    top: np.ndarray = np.argmax(counts, axis=1)
    return top


def decide(first: np.ndarray, second_round: Callable[[int, np.ndarray], np.ndarray], num_classes: int) -> np.ndarray:
    """Double masking's decision for n images: ``first`` [n, K] the first-round predictions;
    ``second_round(mask, rows)`` the second round of mask ``mask`` for those rows of ``first``
    ([len(rows), K]). The one definition of the decision: the defended classifier and
    :func:`worst_case_flips` both call it."""
    winner = majority(first, num_classes)
    out: np.ndarray = winner.copy()
    pending = ~np.all(first == winner[:, None], axis=1)
    for mask in range(first.shape[1]):
        rows = np.flatnonzero(pending & (first[:, mask] != winner))
        if rows.size:
            label = first[rows, mask]
            agreed = np.all(second_round(mask, rows) == label[:, None], axis=1)
            out[rows[agreed]] = label[agreed]
            pending[rows[agreed]] = False
    return out


def predict(classifier: MaskedClassifier, num_classes: int) -> np.ndarray:
    """The defended classifier's prediction for every image of ``classifier.x``."""
    images = np.arange(len(classifier.x))
    return decide(classifier.first_round(images), lambda mask, rows: classifier.second_round(mask, images[rows]),
                  num_classes)


def certify(classifier: MaskedClassifier, predicted: np.ndarray, margin: int = 0) -> np.ndarray:
    """Which predictions no patch the mask set was made for can change: those classified the same
    under every pair of masks. The pairs are tried in order and an image leaves at its first
    disagreement, so an uncertifiable image costs little. ``margin`` > 0 skips that many pairs (tests
    use it to break a certificate on purpose; 0 is the proof's)."""
    k = len(classifier.masks)
    images = np.arange(len(classifier.x))
    ok: np.ndarray = np.all(classifier.first_round(images) == predicted[:, None], axis=1)
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)][margin:]
    for s in range(0, len(pairs), 64):  # pairs in groups: a forward pass holds many images
        chunk = np.array(pairs[s:s + 64])
        live = np.flatnonzero(ok)
        if not live.size:
            break
        image, which = np.repeat(live, len(chunk)), np.tile(np.arange(len(chunk)), len(live))
        agree = classifier.classify(image, chunk[which, 0], chunk[which, 1]) == predicted[image]
        ok[live] = agree.reshape(len(live), len(chunk)).all(axis=1)
    return ok


class PatchCleanserClassifier:
    """Double masking behind the classifier interface
    (:class:`~advpatch.models.classifier.CertifiedPredictor`): ``model`` under the mask set for
    ``mask_patch_size`` patches (``masks_per_side`` masks along each side) decides (:func:`predict`);
    a certificate for another patch size uses that size's mask set (:func:`certify`). Its
    predictions are one-hot probabilities. The patch_cleanser step computes its predictions and
    certificates through it; :attr:`forward_passes` counts the model's forward passes."""

    def __init__(self, model: Any, class_names: Sequence[str], mask_patch_size: int, masks_per_side: int,
                 batch_size: int = 2048) -> None:
        params.check(mask_patch_size=mask_patch_size, masks_per_side=masks_per_side)
        self.model, self._class_names = model, list(class_names)
        self.mask_patch_size, self.masks_per_side, self.batch_size = mask_patch_size, masks_per_side, batch_size
        self.forward_passes = 0

    @property
    def class_names(self) -> List[str]:
        return self._class_names

    def masked(self, x: np.ndarray, patch_size: int) -> MaskedClassifier:
        """The model under the mask set for ``patch_size`` patches on ``x``'s images."""
        masks = mask_set((x.shape[1], x.shape[2]), patch_size, self.masks_per_side)
        return MaskedClassifier(self.model, x, masks, self.batch_size)

    def predict_labels(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        under = self.masked(x, self.mask_patch_size)
        labels = predict(under, len(self._class_names))
        self.forward_passes += under.forward_passes
        return labels

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        one_hot: np.ndarray = np.eye(len(self._class_names), dtype=np.float32)[self.predict_labels(x)]
        return one_hot

    def certify(self, x: np.ndarray, patch_size: int, predicted: Optional[np.ndarray] = None) -> np.ndarray:
        under = self.masked(x, patch_size)
        ok = certify(under, self.predict_labels(x) if predicted is None else predicted)
        self.forward_passes += under.forward_passes
        return ok


def covering(masks: np.ndarray, patch_size: int) -> List[np.ndarray]:
    """For every position of a ``patch_size`` square patch inside the image, the masks that hide
    all of it (found from the masks' pixels)."""
    _, h, w = masks.shape
    p = patch_size
    return [np.flatnonzero(masks[:, top:top + p, left:left + p].all(axis=(1, 2)))
            for top in range(h - p + 1) for left in range(w - p + 1)]


def worst_case_flips(model: Any, x: np.ndarray, predicted: np.ndarray, certified: np.ndarray, masks: np.ndarray,
                     patch_size: int, num_classes: int, batch_size: int = 512) -> np.ndarray:
    """The certified images whose defended prediction some ``patch_size`` patch *could* change. For
    each certified image, the clean predictions under every pair of masks are recomputed (one pair
    at a time, not by :func:`certify`); for every patch position, every prediction under masks of
    which none covers it is the attacker's: all to a rival class, or all kept except one mask's
    row, which goes to the rival (with the rival the smallest and the largest other class, for both
    tie rules). :func:`decide` then runs on each such table. A sound certificate leaves this empty."""
    k = len(masks)
    covers = {tuple(c) for c in covering(masks, patch_size)}
    flips = []
    for i in np.flatnonzero(certified):
        c = int(predicted[i])
        a, b = np.repeat(np.arange(k), k), np.tile(np.arange(k), k)
        views = apply(np.repeat(x[i:i + 1], k * k, axis=0), masks[a] | masks[b])
        clean = np.concatenate([np.argmax(np.asarray(model.predict_on_batch(views[s:s + batch_size])), axis=1)
                                for s in range(0, k * k, batch_size)]).reshape(k, k)
        if _attacked(clean, covers, c, num_classes):
            flips.append(int(i))
    return np.array(flips, dtype=np.int64)


def _attacked(clean: np.ndarray, covers: Collection[Tuple[int, ...]], c: int, num_classes: int) -> bool:
    """Whether some attacker's table (see :func:`worst_case_flips`) makes :func:`decide` answer
    other than ``c`` for a patch that one of ``covers`` (the masks hiding one patch position) hides."""
    k = len(clean)
    if any(not cover for cover in covers):
        return True  # some position lies under no mask: nothing is guaranteed
    others = sorted(set(range(num_classes)) - {c})
    rivals = sorted({others[0], others[-1]})
    tables = []
    for cover in covers:
        protected = np.zeros((k, k), bool)
        protected[list(cover), :] = True
        protected[:, list(cover)] = True
        for rival in rivals:
            tables.append(np.where(protected, clean, rival))  # every unprotected prediction to the rival
            for m in (m for m in range(k) if m not in cover):  # one mask's row to the rival, the rest kept
                one = clean.copy()
                one[m, ~protected[m]] = rival
                one[~protected[m], m] = rival
                tables.append(one)
    stacked = np.stack(tables).astype(np.int16)
    first = stacked[:, np.arange(k), np.arange(k)]
    out = decide(first, lambda mask, rows: stacked[rows, mask], num_classes)
    return bool(np.any(out != c))


def fit_masked(model: Any, x: np.ndarray, y: np.ndarray, masks: np.ndarray, *, epochs: int, batch_size: int,
               learning_rate: float, seed: int, lr_decay: float = 0.0) -> History:
    """Masked training (the paper's Section 4.3): every image, every epoch, under two masks drawn
    from ``masks`` (the same twice: one). ``x``: uint8 images; ``model``: compiled here afresh."""
    import tensorflow as tf

    def view(images: Tensor, union: Tensor) -> Tensor:  # apply(), in TensorFlow
        return tf.where(union[..., None], tf.constant(FILL, images.dtype), images)

    return fit_views(model, x, y, masks, 2, view, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                     seed=seed, lr_decay=lr_decay)
