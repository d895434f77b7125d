"""Certified patch robustness: (de)randomized smoothing (Levine and Feizi, NeurIPS 2020).

The base classifier sees one *ablated* view of an image at a time: a band of ``ablation_size``
columns (``column``) or a square block of that side (``block``) kept, everything else removed.
Each kept pixel is encoded as two channels per image channel, ``(x, 1 - x)``; a removed pixel is
``(0, 0)``, so the classifier can tell "removed" from "black". The smoothed classifier classifies
every view (every position, wrapping around the image's edges) and takes the class with the most
votes, ties to the smaller class index. Derandomized: every position is used, so the certificate
is exact, not probabilistic.

A square patch of side ``p`` can only change the views it intersects: ``delta = p + b - 1`` column
bands, or ``(p + b - 1)^2`` blocks. The prediction ``c`` is certified against every such patch,
anywhere, when ``n_c - delta > n_c' + delta`` for every other class ``c'`` (``>=`` when ``c < c'``:
the tie goes to ``c``). :func:`worst_case_flips` checks certificates independently: it enumerates
every patch position, finds the views it intersects by geometry, hands each of them to the
runner-up class and recomputes the vote.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from advpatch import params
from advpatch.errors import AdvpatchError

ABLATIONS = ("column", "block")


class CertifiedError(AdvpatchError):
    """Bad certification settings."""


def positions(kind: str, image_hw: Tuple[int, int]) -> int:
    """How many views the smoothed classifier takes: one per column, or one per pixel (block)."""
    h, w = image_hw
    return w if kind == "column" else h * w


def kept_mask(kind: str, size: int, position: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """The [H, W] boolean mask of view ``position``: the kept band or block, wrapping around."""
    _check(kind, size, image_hw)
    h, w = image_hw
    mask = np.zeros((h, w), bool)
    if kind == "column":
        mask[:, (position + np.arange(size)) % w] = True
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
    return band if kind == "column" else band * band


def votes(model, x: np.ndarray, kind: str, size: int, batch_size: int = 512) -> np.ndarray:
    """Each image's view predictions [n, positions] (the base model's class at every position)."""
    n, h, w, _ = x.shape
    out = np.empty((n, positions(kind, (h, w))), np.int32)
    for position in range(out.shape[1]):
        mask = kept_mask(kind, size, position, (h, w))
        for start in range(0, n, batch_size):
            view = ablate(x[start:start + batch_size], mask)
            out[start:start + batch_size, position] = np.argmax(model.predict_on_batch(view), axis=1)
    return out


def fit_ablated(model, x: np.ndarray, y: np.ndarray, *, kind: str, size: int, epochs: int, batch_size: int,
                learning_rate: float, seed: int) -> dict:
    """Train the base classifier on ablated views: every image, every epoch, at a position drawn
    from ``seed`` (the same seed, the same views, the same weights). ``x``: uint8 images."""
    import tensorflow as tf

    from advpatch.dataset import to_float
    from advpatch.models import make_optimizer

    n, h, w, c = x.shape
    _check(kind, size, (h, w))
    rng = np.random.default_rng(seed)
    masks = np.stack([kept_mask(kind, size, q, (h, w)) for q in range(positions(kind, (h, w)))])
    steps = int(np.ceil(n / batch_size))

    def batches() -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                yield ablate(to_float(x[idx]), masks[rng.integers(0, len(masks), len(idx))]), y[idx]

    data = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, h, w, 2 * c), tf.float32), tf.TensorSpec((None,), tf.int32)))
    model.compile(optimizer=make_optimizer("adam", learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(data.prefetch(2), epochs=epochs, steps_per_epoch=steps, verbose=0)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def counts(view_predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Votes per class [n, classes] from the view predictions [n, positions]."""
    n = len(view_predictions)
    out = np.zeros((n, num_classes), np.int64)
    np.add.at(out, (np.repeat(np.arange(n), view_predictions.shape[1]), view_predictions.ravel()), 1)
    return out


def predict(vote_counts: np.ndarray) -> np.ndarray:
    """The smoothed prediction: the most votes, ties to the smaller class index."""
    return np.argmax(vote_counts, axis=1)  # argmax returns the first maximum: the smaller index


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
    return np.all(top[:, None] >= needed, axis=1)


def worst_case_flips(view_predictions: np.ndarray, num_classes: int, kind: str, ablation_size: int,
                     patch_size: int, image_hw: Tuple[int, int], certified: np.ndarray) -> np.ndarray:
    """The certified images whose smoothed prediction some ``patch_size`` patch *could* change:
    for every position of the square patch (every top-left corner that keeps it inside the image),
    every view whose kept pixels it touches (found from the masks, not from :func:`delta`) votes
    for the class that would win against the prediction. A sound certificate leaves this empty."""
    h, w = image_hw
    p = patch_size
    masks = np.stack([kept_mask(kind, ablation_size, q, image_hw) for q in range(view_predictions.shape[1])])
    touched = []
    for top in range(h - p + 1):
        for left in range(w - p + 1):
            touched.append(np.flatnonzero(masks[:, top:top + p, left:left + p].any(axis=(1, 2))))
    flips = []
    base = counts(view_predictions, num_classes)
    for i in np.flatnonzero(certified):
        c = int(predict(base[i:i + 1])[0])
        for views in {tuple(t) for t in touched}:
            lost = np.bincount(view_predictions[i, list(views)], minlength=num_classes)
            for rival in range(num_classes):
                if rival == c:
                    continue
                after = base[i] - lost
                after[rival] += len(views)
                if int(np.argmax(after)) != c:
                    flips.append(int(i))
                    break
            else:
                continue
            break
    return np.array(flips, dtype=np.int64)


def _check(kind: str, size: int, image_hw: Tuple[int, int]) -> None:
    if kind not in ABLATIONS:
        raise CertifiedError(f"ablation must be one of {', '.join(map(repr, ABLATIONS))}, got {kind!r}")
    if not 1 <= size <= min(image_hw):
        raise CertifiedError(f"ablation_size must be in [1, {min(image_hw)}] for {image_hw[0]}x{image_hw[1]} images, "
                             f"got {size}")
