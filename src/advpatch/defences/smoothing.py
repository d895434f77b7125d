"""Certified patch robustness: (de)randomized smoothing (Levine and Feizi, NeurIPS 2020).

The base classifier sees one *ablated* view of an image at a time: a band of ``ablation_size``
columns (``column``) or rows (``row``), or a square block of that side (``block``) kept, everything
else removed; ``cross`` takes every column band and every row band (``w + h`` views).
Each kept pixel is encoded as two channels per image channel, ``(x, 1 - x)``; a removed pixel is
``(0, 0)``, so the classifier can tell "removed" from "black". The smoothed classifier classifies
every view (every position, wrapping around the image's edges) and takes the class with the most
votes, ties to the smaller class index. Derandomized: every position is used, so the certificate
is exact, not probabilistic.

A square patch of side ``p`` can only change the views it intersects: ``delta = p + b - 1`` column
(or row) bands, ``2 (p + b - 1)`` for ``cross`` (as many column bands and row bands), or
``(p + b - 1)^2`` blocks. The prediction ``c`` is certified against every such patch,
anywhere, when ``n_c - delta > n_c' + delta`` for every other class ``c'`` (``>=`` when ``c < c'``:
the tie goes to ``c``). :func:`worst_case_flips` checks certificates independently: it enumerates
every patch position, finds the views it intersects by geometry, hands each of them to the
runner-up class and recomputes the vote.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from advpatch import params
from advpatch.errors import CertifiedError
from advpatch.params import ABLATIONS

Tensor = Any
"""A TensorFlow tensor: TensorFlow is untyped."""
View = Callable[[Tensor, Tensor], Tensor]
"""``view(float images, union of masks)``: the images a base classifier trains on (TensorFlow ops)."""
History = Dict[str, List[float]]
"""Keras' training history: each metric's value per epoch."""


def positions(kind: str, image_hw: Tuple[int, int]) -> int:
    """How many views the smoothed classifier takes: one per column (row), one per column and one
    per row (cross), or one per pixel (block)."""
    h, w = image_hw
    return {"column": w, "row": h, "cross": w + h}.get(kind, h * w)


def kept_mask(kind: str, size: int, position: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """The [H, W] boolean mask of view ``position``: the kept band or block, wrapping around."""
    _check(kind, size, image_hw)
    h, w = image_hw
    mask = np.zeros((h, w), bool)
    if kind == "cross":  # the column bands, then the row bands
        kind, position = ("column", position) if position < w else ("row", position - w)
    if kind == "column":
        mask[:, (position + np.arange(size)) % w] = True
    elif kind == "row":
        mask[(position + np.arange(size)) % h, :] = True
    else:
        top, left = divmod(position, w)
        mask[np.ix_((top + np.arange(size)) % h, (left + np.arange(size)) % w)] = True
    return mask


def ablate(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Float images [n, H, W, C] in [0, 1] -> the view [n, H, W, 2C]: ``(x, 1 - x)`` where ``mask``
    keeps a pixel (a mask per image [n, H, W], or one for all [H, W]), ``(0, 0)`` elsewhere."""
    keep = np.broadcast_to(mask, x.shape[:3])[..., None].astype(x.dtype)
    return np.concatenate([x * keep, (1 - x) * keep], axis=-1)


def delta(kind: str, ablation_size: int, patch_size: int) -> int:
    """How many views a ``patch_size`` square patch can intersect (Levine and Feizi's Delta)."""
    params.require(patch_size >= 1, f"patch_size must be at least 1, got {patch_size}")
    band = patch_size + ablation_size - 1
    return {"column": band, "row": band, "cross": 2 * band}.get(kind, band * band)


def view_probabilities(model: Any, x: np.ndarray, kind: str, size: int, batch_size: int = 512) -> np.ndarray:
    """The base model's class probabilities for every view of every image: [n, positions, classes]."""
    n, h, w, _ = x.shape
    out = None
    for position in range(positions(kind, (h, w))):
        mask = kept_mask(kind, size, position, (h, w))
        for start in range(0, n, batch_size):
            probs = np.asarray(model.predict_on_batch(ablate(x[start:start + batch_size], mask)), np.float32)
            if out is None:
                out = np.empty((n, positions(kind, (h, w)), probs.shape[1]), np.float32)
            out[start:start + batch_size, position] = probs
    if out is None:
        raise CertifiedError(f"no views to classify: {n} images, {positions(kind, (h, w))} {kind} positions")
    return out


def votes_from(probabilities: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Each view's votes [n, positions, classes]: with ``threshold`` 0, one vote for its most
    probable class (the smaller index on a tie); above 0, a vote for every class whose probability
    reaches it (Levine and Feizi's thresholded counting: a view that sees nothing, e.g. a blank
    band, votes for no class)."""
    if not 0.0 <= threshold < 1.0:
        raise CertifiedError(f"threshold must be in [0, 1), got {threshold}")
    votes: np.ndarray
    if threshold > 0:
        votes = probabilities >= threshold
        return votes
    top = probabilities.argmax(axis=-1)
    votes = np.arange(probabilities.shape[-1]) == top[..., None]
    return votes


def fit_ablated(model: Any, x: np.ndarray, y: np.ndarray, *, kind: str, size: int, epochs: int, batch_size: int,
                learning_rate: float, seed: int, lr_decay: float = 0.0) -> History:
    """Train the base classifier on ablated views: every image, every epoch, at a position drawn
    from ``seed`` (the same seed, the same views, the same weights). ``x``: uint8 images."""
    import tensorflow as tf

    _n, h, w, _c = x.shape
    _check(kind, size, (h, w))
    masks = np.stack([kept_mask(kind, size, q, (h, w)) for q in range(positions(kind, (h, w)))])

    def view(images: Tensor, keep: Tensor) -> Tensor:  # ablate(), in TensorFlow
        keep = tf.cast(keep, images.dtype)[..., None]
        return tf.concat([images * keep, (1 - images) * keep], axis=-1)

    return fit_views(model, x, y, masks, 1, view, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                     seed=seed, lr_decay=lr_decay)


def fit_views(model: Any, x: np.ndarray, y: np.ndarray, masks: np.ndarray, draws: int, view: View, *, epochs: int,
              batch_size: int, learning_rate: float, seed: int, lr_decay: float = 0.0) -> History:
    """Train ``model`` (compiled here afresh: Adam, cross-entropy) on views of the images: every
    image, every epoch, in an order drawn from ``seed``, each batch's images under the union of
    ``draws`` masks drawn from ``masks`` [K, H, W] per image, ``view(float images, union)`` making
    the view (TensorFlow ops). Every draw is made up front from one generator (the same seed, the
    same views, the same weights); TensorFlow builds the batches. ``lr_decay``: the share of the
    steps, at the end, over which the learning rate decays (cosine) to 1% of ``learning_rate`` (0:
    constant). ``x``: uint8 images."""
    import tensorflow as tf

    from advpatch.models import make_optimizer

    n = len(x)
    rng = np.random.default_rng(seed)
    orders, picks = [], []
    for _ in range(epochs):
        orders.append(rng.permutation(n))
        picks.append(np.concatenate([np.stack([rng.integers(0, len(masks), len(orders[-1][s:s + batch_size]))
                                               for _ in range(draws)], axis=1)
                                     for s in range(0, n, batch_size)]))
    images, labels, mask_table = tf.constant(x), tf.constant(y, tf.int32), tf.constant(masks)

    def batch(order: Tensor, pick: Tensor) -> Tuple[Tensor, Tensor]:
        union = tf.reduce_any(tf.gather(mask_table, pick), axis=1)
        return view(tf.cast(tf.gather(images, order), tf.float32) * (1.0 / 255.0), union), tf.gather(labels, order)

    data = (tf.data.Dataset.from_tensor_slices((np.stack(orders), np.stack(picks)))
            .flat_map(lambda order, pick: tf.data.Dataset.from_tensor_slices((order, pick)).batch(batch_size))
            .map(batch).prefetch(2))
    steps = int(np.ceil(n / batch_size))
    # an epoch per call into TensorFlow: a small model's step is mostly Python's time otherwise
    optimizer = make_optimizer("adam", learning_rate)
    decay_steps = round(steps * epochs * lr_decay)
    if decay_steps:  # held, then cosine to 1%: Keras' warm-up from the rate to itself is the hold
        import keras

        hold = steps * epochs - decay_steps
        optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps, alpha=0.01, **({"warmup_target": learning_rate, "warmup_steps": hold}
                                                       if hold else {})))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps)
    history = model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def counts(votes: np.ndarray) -> np.ndarray:
    """Votes per class [n, classes] from the views' votes [n, positions, classes]."""
    per_class: np.ndarray = votes.sum(axis=1, dtype=np.int64)
    return per_class


def one_hot(view_predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Votes [n, positions, classes] from each view's predicted class [n, positions]."""
    votes: np.ndarray = np.arange(num_classes) == view_predictions[..., None]
    return votes


def predict(vote_counts: np.ndarray) -> np.ndarray:
    """The smoothed prediction: the most votes, ties to the smaller class index."""
    top: np.ndarray = np.argmax(vote_counts, axis=1)  # argmax returns the first maximum: the smaller index
    return top


def certify(vote_counts: np.ndarray, kind: str, ablation_size: int, patch_size: int,
            margin: int = 0) -> np.ndarray:
    """Which predictions no ``patch_size`` patch can change. ``margin`` shifts the bound (tests
    use it to break a certificate on purpose; 0 is the proof's)."""
    d = delta(kind, ablation_size, patch_size) + margin
    n, k = vote_counts.shape
    c = predict(vote_counts)
    top = vote_counts[np.arange(n), c]
    others = vote_counts.copy()
    others[np.arange(n), c] = np.iinfo(np.int64).min // 2
    classes = np.arange(k)[None, :]
    # n_c - d > n_c' + d for c' < c; >= for c' > c (the tie then goes to c)
    needed = others + 2 * d + (classes < c[:, None])
    certified: np.ndarray = np.all(top[:, None] >= needed, axis=1)
    return certified


def shares(vote_counts: np.ndarray) -> np.ndarray:
    """Vote shares [n, classes] as the smoothed classifier's probabilities (uniform where no view
    voted)."""
    total = vote_counts.sum(axis=1, keepdims=True)
    out: np.ndarray = np.where(total > 0, vote_counts / np.maximum(total, 1), 1.0 / vote_counts.shape[1])
    return out


class SmoothedClassifier:
    """The smoothed classifier behind the classifier interface
    (:class:`~advpatch.models.classifier.CertifiedPredictor`): ``model`` (the base classifier,
    trained on views) votes over every ``kind`` view of ``size`` of each image; the most votes win
    (:func:`predict`), the vote shares are its probabilities (:func:`shares`), the margin certifies
    (:func:`certify`). The derandomized_smoothing step computes its predictions and certificates
    through it."""

    def __init__(self, model: Any, class_names: List[str], kind: str, size: int, vote_threshold: float = 0.0,
                 batch_size: int = 512) -> None:
        params.check(ablation=kind, ablation_size=size, vote_threshold=vote_threshold)
        self.model, self._class_names = model, list(class_names)
        self.kind, self.size, self.vote_threshold, self.batch_size = kind, size, vote_threshold, batch_size

    @property
    def class_names(self) -> List[str]:
        return self._class_names

    def votes(self, x: np.ndarray) -> np.ndarray:
        """Each view's votes [n, positions, classes] for float images ``x``."""
        return votes_from(view_probabilities(self.model, x, self.kind, self.size, self.batch_size), self.vote_threshold)

    def counts(self, x: np.ndarray) -> np.ndarray:
        """Votes per class [n, classes]."""
        return counts(self.votes(x))

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return shares(self.counts(x))

    def predict_labels(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return predict(self.counts(x))

    def certify(self, x: np.ndarray, patch_size: int, predicted: Optional[np.ndarray] = None) -> np.ndarray:
        vote_counts = self.counts(x)
        ok = certify(vote_counts, self.kind, self.size, patch_size)
        if predicted is not None:  # a certificate is for the smoothed prediction only
            ok &= predict(vote_counts) == predicted
        return ok


def worst_case_flips(votes: np.ndarray, kind: str, ablation_size: int, patch_size: int,
                     image_hw: Tuple[int, int], certified: np.ndarray) -> np.ndarray:
    """The certified images whose smoothed prediction some ``patch_size`` patch *could* change:
    for every position of the square patch (every top-left corner that keeps it inside the image),
    every view whose kept pixels it touches (found from the masks, not from :func:`delta`) stops
    voting for the prediction and votes for the rival instead. A sound certificate leaves this
    empty. ``votes``: [n, positions, classes], as :func:`votes_from` makes them."""
    h, w = image_hw
    p = patch_size
    n_views = votes.shape[1]
    masks = np.stack([kept_mask(kind, ablation_size, q, image_hw) for q in range(n_views)])
    touched = {tuple(np.flatnonzero(masks[:, top:top + p, left:left + p].any(axis=(1, 2))))
               for top in range(h - p + 1) for left in range(w - p + 1)}
    base = counts(votes)
    flips = []
    for i in np.flatnonzero(certified):
        c = int(predict(base[i:i + 1])[0])
        if any(_flipped(base[i], votes[i, list(views)], c) for views in touched):
            flips.append(int(i))
    return np.array(flips, dtype=np.int64)


def _flipped(count: np.ndarray, touched_votes: np.ndarray, c: int) -> bool:
    """Whether handing the touched views to some rival changes the winner ``c``."""
    for rival in range(len(count)):
        if rival == c:
            continue
        after = count.copy()
        after[c] -= int(touched_votes[:, c].sum())
        after[rival] += len(touched_votes) - int(touched_votes[:, rival].sum())
        if int(np.argmax(after)) != c:
            return True
    return False


def _check(kind: str, size: int, image_hw: Tuple[int, int]) -> None:
    if kind not in ABLATIONS:
        raise CertifiedError(f"ablation must be one of {', '.join(map(repr, ABLATIONS))}, got {kind!r}")
    if not 1 <= size <= min(image_hw):
        raise CertifiedError(f"ablation_size must be in [1, {min(image_hw)}] for {image_hw[0]}x{image_hw[1]} images, "
                             f"got {size}")
