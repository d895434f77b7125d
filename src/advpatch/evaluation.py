"""Predictions and classification metrics (NumPy only, so they are checked by hand in tests)."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from advpatch.dataset import Dataset, to_float

EPS = 1e-7


def predict(model, dataset: Dataset, batch_size: int) -> Dict[str, np.ndarray]:
    """Run ``model`` over ``dataset`` in batches: ``{"probabilities", "y", <columns>...}``."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    probs: List[np.ndarray] = []
    rest: Dict[str, List[np.ndarray]] = {}
    for batch in dataset.batches(batch_size):
        probs.append(forward(tf.constant(to_float(batch["x"]))).numpy())
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


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = rankdata(scores)
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
    rate: the share of patched images whose true label is not the target that the model now
    assigns to the target."""
    patched = patched.astype(bool)
    eligible = patched & (y_true != targets)
    out = {"num_patched": float(patched.sum())}
    if patched.any():
        out["accuracy_patched"] = float((y_pred[patched] == y_true[patched]).mean())
    if (~patched).any():
        out["accuracy_unpatched"] = float((y_pred[~patched] == y_true[~patched]).mean())
    if eligible.any():
        out["targeted_success_rate"] = float((y_pred[eligible] == targets[eligible]).mean())
    return out
