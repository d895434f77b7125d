"""What a classifier did: predictions, classification metrics, patch metrics, distances between
images, and the per-image predictions file (metrics in NumPy only, so they are checked by hand in
tests)."""

from __future__ import annotations

import csv
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from advpatch.data.dataset import Dataset, to_float
from advpatch.io.files import atomic_file
from advpatch.parallel import made_once

EPS = 1e-7
Z_95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""


def wilson_interval(successes: int, count: int, z: float = Z_95) -> Tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / count`` (Wilson 1927; Brown, Cai
    and DasGupta 2001 advise it over the normal approximation, which fails near 0 and 1)."""
    if count <= 0:
        return float("nan"), float("nan")
    p = successes / count
    z2n = z * z / count
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / count + z2n / (4 * count))
    # in exact arithmetic low <= p <= high; rounding can put a bound a hair past p at 0 or 1
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def rate(successes: int, count: int) -> Dict[str, Any]:
    """A proportion with its count and 95% Wilson interval, as results.json stores every rate."""
    low, high = wilson_interval(successes, count)
    return {"value": successes / count if count else float("nan"), "successes": int(successes),
            "count": int(count), "low": low, "high": high, "interval": "wilson-95"}


def decimals(count: int) -> int:
    """How many decimals a rate over ``count`` items supports: enough to tell ``k/count`` from
    ``(k+1)/count`` (2 for up to 100 images, 3 up to 1,000, 4 beyond)."""
    return min(4, max(2, math.ceil(math.log10(max(count, 1)))))


def rate_counts(y_true: np.ndarray, y_pred: np.ndarray, patched: Optional[np.ndarray] = None,
                targets: Optional[np.ndarray] = None) -> Dict[str, Tuple[int, int]]:
    """(successes, count) of every rate an evaluation reports: ``accuracy``; with ``patched`` and
    ``targets``, ``accuracy_patched`` and ``accuracy_unpatched`` (on the images with and without a
    patch) and ``targeted_success_rate`` (patched images whose true label is not the target, now
    assigned to the target). A rate with no images to count is left out."""
    correct = y_pred == y_true
    out = {"accuracy": (int(correct.sum()), len(correct))}
    if patched is not None and targets is not None:
        patched = patched.astype(bool)
        eligible = patched & (y_true != targets)
        for key, hits, where in (("accuracy_patched", correct, patched), ("accuracy_unpatched", correct, ~patched),
                                 ("targeted_success_rate", y_pred == targets, eligible)):
            if where.any():
                out[key] = (int(hits[where].sum()), int(where.sum()))
    return out


def predict(classifier: Any, dataset: Dataset, batch_size: int, start: int = 0, stop: Optional[int] = None,
            layout: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
    """Run a :class:`~advpatch.models.classifier.Classifier` (or another
    :class:`~advpatch.models.classifier.Predictor`: a certified defence's classifier) over
    ``dataset`` (rows ``start:stop``) in batches: ``{"probabilities", "y", <columns>...}``. Of a shard (``layout``, see
    :mod:`advpatch.steps._shards`), the batches are the whole's (:meth:`Dataset.batches`), each run with
    blank images around it to its size in the whole: a kernel's arithmetic may depend on the batch's
    shape, never on its other images, so each image gets the probabilities it gets in the whole."""
    import tensorflow as tf

    if hasattr(classifier, "forward"):  # a Classifier: its compiled forward pass
        forward = classifier.forward

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(forward(tf.constant(to_float(x))).numpy())
    else:  # another Predictor (a certified defence's classifier): its own predictions

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(classifier.predict(to_float(x)), np.float32)
    probs: List[np.ndarray] = []
    rest: Dict[str, List[np.ndarray]] = {}
    at, total = (layout["offset"], sum(layout["total"])) if layout else (0, 0)
    for batch in dataset.batches(batch_size, start, stop):
        x, n = batch["x"], len(batch["y"])
        front = back = 0
        if layout:
            front = at % batch_size
            back = min(total, at - front + batch_size) - at - n
            x = np.concatenate([np.zeros((front, *x.shape[1:]), x.dtype), x, np.zeros((back, *x.shape[1:]), x.dtype)])
        probs.append(run(x)[front:front + n])
        at += n
        for k, v in batch.items():
            if k != "x":
                rest.setdefault(k, []).append(v)
    out = {k: np.concatenate(v) for k, v in rest.items()}
    out["probabilities"] = np.concatenate(probs).astype(np.float32)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``m[i, j]``: how many images of true class ``i`` were predicted as ``j``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank (``scipy.stats.rankdata``'s
    default, without importing SciPy's statistics, a second of every task's start)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new_group) - 1]
    return ranks


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, num_classes: Optional[int] = None
) -> Dict[str, float]:
    """Accuracy, mean cross-entropy loss, precision / recall / F1 (macro and support-weighted) and
    one-vs-rest macro AUC.

    Macro averages run over the classes that occur in ``y_true`` or in the predictions (as
    scikit-learn does by default); AUC over the classes that have both positives and negatives.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = num_classes or probabilities.shape[1]
    n = len(y_true)
    if n == 0:
        raise ValueError("no examples to evaluate")
    y_pred = probabilities.argmax(axis=1)
    m = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(m).astype(np.float64)
    predicted = m.sum(axis=0).astype(np.float64)
    support = m.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    weights = support / n

    aucs = []
    for c in range(num_classes):
        positive = y_true == c
        if 0 < positive.sum() < n:
            aucs.append(_binary_auc(probabilities[:, c], positive))

    p_true = probabilities[np.arange(n), y_true]
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "loss": float(-np.log(np.clip(p_true, EPS, 1.0)).mean()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "auc_macro_ovr": float(np.mean(aucs)) if aucs else float("nan"),
        "num_examples": float(n),
    }


def patch_metrics(y_true: np.ndarray, y_pred: np.ndarray, patched: np.ndarray, targets: np.ndarray) -> Dict[str, float]:
    """What a patch did: accuracy on patched and on unpatched images, and the targeted success
    rate (see :func:`rate_counts`), with the number of patched images."""
    counts = rate_counts(y_true, y_pred, patched, targets)
    out = {"num_patched": float(patched.astype(bool).sum())}
    out.update({k: k_n[0] / k_n[1] for k, k_n in counts.items() if k != "accuracy"})
    return out


DISTANCE_CHUNK = 32
"""Images whose distances are computed at once: memory stays a few float64 images' worth."""


def distance_stats(clean: np.ndarray, patched: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-image distances between images, uint8 (read as value / 255) or float in [0, 1]: l_inf,
    l1, l2, cosine similarity and the 1-D Wasserstein distance between their pixel-value
    distributions. Computed :data:`DISTANCE_CHUNK` images at a time; uint8 images exactly from the
    pixels that differ (:func:`_uint8_distances`)."""
    parts = [_distances(clean[i:i + DISTANCE_CHUNK], patched[i:i + DISTANCE_CHUNK])
             for i in range(0, len(clean), DISTANCE_CHUNK)]
    names = ("l_inf", "l1", "l2", "cosine_similarity", "wasserstein")
    return {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in names}


def _distances(clean: np.ndarray, patched: np.ndarray) -> Dict[str, np.ndarray]:
    if clean.dtype == np.uint8 and patched.dtype == np.uint8:
        return _uint8_distances(clean.reshape(len(clean), -1), patched.reshape(len(patched), -1))
    a = clean.reshape(len(clean), -1).astype(np.float64)
    b = patched.reshape(len(patched), -1).astype(np.float64)
    d = b - a
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.divide((a * b).sum(axis=1), norms, out=np.ones(len(a)), where=norms > 0)
    return {"l_inf": np.abs(d).max(axis=1), "l1": np.abs(d).sum(axis=1), "l2": np.sqrt((d * d).sum(axis=1)),
            "cosine_similarity": cos, "wasserstein": np.abs(np.sort(a, axis=1) - np.sort(b, axis=1)).mean(axis=1)}


def _uint8_distances(a: np.ndarray, b: np.ndarray, squares: Optional[np.ndarray] = None,
                     pixels: int = 0) -> Dict[str, np.ndarray]:
    """The same figures for uint8 images [m, pixels], exactly, from the pixels that differ (a patch
    changes a small part of an image): see :func:`changed_distances`. ``a`` and ``b`` may be
    only a part of each image that holds every pixel that differs (a patch's window), with
    ``squares`` (|a|^2 over the whole images, :func:`squares_of`) and ``pixels`` (their size)."""
    m, q = a.shape
    squares = np.asarray(squares_of(a) if squares is None else squares, np.int64)
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    at = np.flatnonzero(a != b)  # row-major: each image's changed pixels together
    counts = np.diff(np.append(np.searchsorted(at, np.arange(m) * q), len(at)))
    return changed_distances(a.ravel()[at], b.ravel()[at], counts, squares, pixels or q)


def changed_distances(before: np.ndarray, after: np.ndarray, counts: np.ndarray, squares: np.ndarray,
                      pixels: int) -> Dict[str, np.ndarray]:
    """:func:`distance_stats` of uint8 images, exactly, from only the pixels that may differ:
    ``before`` and ``after`` [M] (or [K, M], K planes of M each: a paste's channels) those pixels'
    values, image by image along M (``counts[i]`` of image i, in order; pixels that do not differ
    may be among them: they count for nothing), ``squares`` [m] |before image|^2 over each whole
    image (:func:`squares_of`) and ``pixels`` the images' size (:func:`change_sums`, then
    :func:`distances_of_sums`)."""
    return distances_of_sums(change_sums(before, after, counts), squares, pixels)


def change_sums(before: np.ndarray, after: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """int64 [m, 5] per image over its points (as :func:`changed_distances` takes them): max |d|,
    sum |d|, sum d^2, sum d (a + b), and sum over k < 255 of |#(a <= k) - #(b <= k)| (the gap
    between the two cumulative histograms; pixels that do not differ add to both). One compiled
    pass; the compiled paste computes the same integers as it pastes
    (:func:`advpatch.patches.paste.paste_masked`'s ``record``)."""
    before, after = np.atleast_2d(before), np.atleast_2d(after)
    sums: np.ndarray = _change_sums()(np.ascontiguousarray(before, np.uint8), np.ascontiguousarray(after, np.uint8),
                                      np.ascontiguousarray(counts, np.int64))
    return sums


def distances_of_sums(sums: np.ndarray, squares: np.ndarray, pixels: int) -> Dict[str, np.ndarray]:
    """:func:`distance_stats` from each image's :func:`change_sums`, ``squares`` [m] |before
    image|^2 over each whole image (:func:`squares_of`) and ``pixels`` the images' size. Integer
    sums (the dot product from the three squared norms: a.b = (|a|^2 + |b|^2 - |a - b|^2) / 2),
    and the Wasserstein distance from the two 256-bin histograms, whose difference only the changed
    pixels make."""
    squares = np.asarray(squares, np.int64)
    l_inf, l1, l2, cross, gaps = np.asarray(sums, np.int64).T
    has = l1 > 0  # a pixel differs
    out = {"l_inf": l_inf / 255, "l1": l1 / 255, "l2": np.sqrt(l2.astype(np.float64)) / 255}
    b_squares = squares + cross  # |b|^2 - |a|^2 = sum of d (a + b) over the points
    dot = (squares + b_squares - l2) // 2
    ok = has & (squares > 0) & (b_squares > 0)
    cos = np.ones(len(l1))
    cos[ok] = dot[ok] / np.sqrt(squares[ok].astype(np.float64) * b_squares[ok].astype(np.float64))
    out["cosine_similarity"] = cos
    out["wasserstein"] = gaps / (pixels * 255.0)  # the CDFs step at k / 255
    return {k: out[k] for k in ("l_inf", "l1", "l2", "cosine_similarity", "wasserstein")}


@made_once
def _change_sums() -> Any:
    """:func:`change_sums`' loop (:func:`advpatch.parallel.compiled`): ``sums(before, after, counts)``,
    per image over its points of every plane."""
    from advpatch.parallel import compiled

    def sums(before: np.ndarray, after: np.ndarray, counts: np.ndarray) -> np.ndarray:
        out = np.zeros((len(counts), 5), np.int64)
        hist = np.zeros(256, np.int64)
        start = 0
        for i in range(len(counts)):
            stop = start + counts[i]
            top, l1, l2, cross = 0, 0, 0, 0
            hist[:] = 0
            for k in range(before.shape[0]):
                for j in range(start, stop):
                    a, b = np.int64(before[k, j]), np.int64(after[k, j])
                    d = b - a
                    ad = abs(d)
                    top = max(top, ad)
                    l1 += ad
                    l2 += d * d
                    cross += d * (a + b)
                    hist[a] += 1
                    hist[b] -= 1
            gap, run = 0, 0
            for v in range(255):
                run += hist[v]
                gap += abs(run)
            out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4] = top, l1, l2, cross, gap
            start = stop
        return out

    return compiled(sums)


def squares_of(a: np.ndarray) -> np.ndarray:
    """[m] int64 |a_i|^2 of uint8 images ``a`` [m, ...], exactly (integer sums, one compiled pass)."""
    squares: np.ndarray = _square_sums()(np.ascontiguousarray(a, np.uint8).reshape(len(a), -1))
    return squares


@made_once
def _square_sums() -> Any:
    from advpatch.parallel import compiled

    def sums(a: np.ndarray) -> np.ndarray:
        out = np.zeros(a.shape[0], np.int64)
        for i in range(a.shape[0]):
            total = np.int64(0)
            for j in range(a.shape[1]):
                v = np.int64(a[i, j])
                total += v * v
            out[i] = total
        return out

    return compiled(sums)


def summarize(values: np.ndarray) -> Dict[str, float]:
    """mean, median, stdev, iqr, min, max."""
    if len(values) == 0:
        return {}
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"mean": float(values.mean()), "median": float(med), "stdev": float(values.std()),
            "iqr": float(q3 - q1), "min": float(values.min()), "max": float(values.max())}


def write_predictions(path: str, out: Dict[str, Any], predicted: np.ndarray, class_names: Sequence[str]) -> None:
    """Per-image predictions as CSV: index, label, prediction, confidence, names, and every
    per-image column of the data (patch provenance, for example)."""
    extra = [k for k in out if k not in ("probabilities", "y")]
    probs = out["probabilities"]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "predicted", "confidence", "label_name", "predicted_name", *extra])
        for i, (y, p) in enumerate(zip(out["y"], predicted)):
            writer.writerow([i, int(y), int(p), f"{probs[i, p]:.6f}", class_names[y], class_names[p],
                             *[_scalar(out[k][i]) for k in extra]])


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
