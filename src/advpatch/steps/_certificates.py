"""What the certified defences' steps share: the data checks, the certified-accuracy curve, the
per-image certificates file and the evaluations of the comparison table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from advpatch.results import Evaluation
from advpatch.steps._base import log

if TYPE_CHECKING:
    from advpatch.data.dataset import Dataset


def check_data(training_data: str, testing_data: str, sizes: Sequence[int]) -> Tuple[Dataset, Dataset]:
    """The two datasets (they must agree) and the patch sizes (they must fit the images)."""
    from advpatch.data.dataset import Dataset
    from advpatch.errors import DatasetError

    train_set, test_set = Dataset(training_data), Dataset(testing_data)
    train_set.check_trainable(f"training_data ({training_data})")
    if test_set.image_shape != train_set.image_shape or test_set.class_names != train_set.class_names:
        raise DatasetError(f"the test dataset ({test_set.summary()}) does not match the training dataset "
                           f"({train_set.summary()})")
    h, w, _ = train_set.image_shape
    too_big = [int(s) for s in sizes if int(s) > min(h, w)]
    if too_big:
        raise DatasetError(f"certify_patch_sizes {too_big} do not fit {h}x{w} images")
    return train_set, test_set


def curve(name: str, sizes: Sequence[int], certify: Callable[[int], np.ndarray], predicted: np.ndarray,
          test: Dict[str, np.ndarray]) -> Tuple[Dict[str, float], Dict[str, List[int]], np.ndarray, float]:
    """The defended classifier's accuracy on the clean test images and its certified accuracy at
    each patch size (over the same images): ``certify(size)`` says which predictions are
    certified. Returns (metrics, their counts, each image's largest certified
    size (0: none), seconds spent certifying)."""
    import time

    clean = ~test["patched"].astype(bool) if "patched" in test else np.ones(len(predicted), bool)
    right = clean & (predicted == test["y"])
    rates: Dict[str, List[int]] = {"clean_accuracy": [int(right.sum()), int(clean.sum())]}
    metrics: Dict[str, float] = {"clean_accuracy": rates["clean_accuracy"][0] / max(1, int(clean.sum()))}
    radius = np.zeros(len(predicted), np.int64)
    started = time.perf_counter()
    for size in sorted(int(s) for s in sizes):
        ok = certify(size)
        radius[ok] = size  # the largest size certified stays
        rates[f"certified_accuracy_{size}"] = [int((ok & right).sum()), int(clean.sum())]
        metrics[f"certified_accuracy_{size}"] = rates[f"certified_accuracy_{size}"][0] / max(1, int(clean.sum()))
    seconds = time.perf_counter() - started
    log.info("%s: clean accuracy %.4f, certified %s (%.1f s)", name, float(right.sum() / max(1, clean.sum())),
             ", ".join(f"{s}x{s} {metrics[f'certified_accuracy_{s}']:.3f}" for s in sorted(int(s) for s in sizes)),
             seconds)
    return metrics, rates, radius, seconds


def as_curve(metrics: Dict[str, float]) -> Dict[str, float]:
    """Patch size (as text) -> certified accuracy, in increasing size, from :func:`curve`'s metrics."""
    return {k.rsplit("_", 1)[1]: v for k, v in metrics.items() if k.startswith("certified_accuracy_")}


def evaluations(row: str, test: Dict[str, np.ndarray], probabilities: np.ndarray, test_set: Dataset,
                metrics: Dict[str, float], rates: Dict[str, List[int]]) -> List[Evaluation]:
    """The defended classifier's evaluations (clean, and patched when the data has patched copies),
    the certified figures on the clean one."""
    from advpatch.steps._evaluations import evaluate, has_patches

    out = {**{k: v for k, v in test.items() if k != "x"}, "probabilities": probabilities.astype(np.float32)}
    found = evaluate(row, "split" if has_patches(test_set) else "clean", out, test_set.class_names, test_set)
    for e in found:
        if e.condition == "clean":
            e.metrics.update(metrics)
            e.counts.update(rates)
    return found


def write_certificates(path: str, test: Dict[str, np.ndarray], predicted: np.ndarray, radius: np.ndarray,
                       **columns: Any) -> None:
    """One CSV row per test image: its index, label, the defended prediction, ``columns`` (the
    defence's own evidence) and the largest patch size its prediction is certified against (0:
    none), and whether it is a patched copy."""
    import csv

    from advpatch.io.files import atomic_file

    y = test["y"]
    patched = test.get("patched", np.zeros(len(y), bool))
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "predicted", *columns, "certified_patch_size", "patched"])
        for i in range(len(y)):
            writer.writerow([i, int(y[i]), int(predicted[i]), *(int(c[i]) for c in columns.values()),
                             int(radius[i]), bool(patched[i])])
