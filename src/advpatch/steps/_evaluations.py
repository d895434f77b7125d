"""Evaluations as the comparison table wants them, shared by infer and by train (which evaluates
its model on its test data): on data that holds clean images and patched copies of them, one
evaluation of each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from advpatch.results import Evaluation
from advpatch.steps._base import log, log_input

if TYPE_CHECKING:
    from advpatch.data.dataset import Dataset
    from advpatch.steps._base import Tracker

NUM_SAMPLES = 8
"""Images of each evaluation kept (as small PNGs) for the report."""
MAX_MATRIX_CLASSES = 100
"""Above this many classes, a confusion matrix keeps only the classes that occur in the labels or
the predictions (every image is still counted)."""


def has_patches(dataset: Dataset) -> bool:
    return "patched" in dataset.spec.columns and "patch_target" in dataset.spec.columns


def evaluate(row: str, condition: str, out: Dict[str, np.ndarray], class_names: Sequence[str],
             dataset: Any, layout: Optional[Dict[str, Any]] = None, first: int = 0,
             samples: Optional[Dict[str, List[Dict[str, Any]]]] = None) -> List[Evaluation]:
    """The evaluations of a model's predictions ``out`` (see :func:`advpatch.evaluation.predict`)
    on ``dataset``: ``condition`` 'split' makes one of the clean and one of the patched images;
    'auto' one, patched when the data has patches; 'clean' or 'patched' one, so named. Of a shard
    (``layout``, rows from ``first`` of ``dataset``), the samples are those of the whole that it holds;
    ``samples`` (by condition), when given, are the evaluations' (merge_evaluations: no images)."""
    predicted = out["probabilities"].argmax(axis=1)
    if condition == "split":
        parts: List[Tuple[str, np.ndarray, Optional[bool]]] = [
            ("clean", ~out["patched"].astype(bool), False), ("patched", out["patched"].astype(bool), True)]
    else:
        named = condition if condition != "auto" else ("patched" if "patched" in out else "clean")
        parts = [(named, np.ones(len(predicted), bool), None)]
    from advpatch.steps._shards import part

    return [_evaluation(row, name, where, out, predicted, class_names, samples[name] if samples is not None else
                        _samples(np.flatnonzero(where), out, predicted, class_names, dataset, first,
                                 layout and {**layout, "part": part(layout, flag)}))
            for name, where, flag in parts]


def log_evaluations(track: Tracker, evaluations: Sequence[Evaluation], verb: str, data: str, *, part: bool = False,
                    **extra: Any) -> None:
    """One MLflow run per evaluation, ``'<verb>: <row> / <condition>'``, with its metrics, rate
    counts and confusion matrix, and ``data`` (a Dataset artifact's path) as the run's input
    dataset. ``part``: the runs are records beside the task's own (see
    :meth:`~advpatch.steps._base.Tracker.run`); so are they when there are several."""
    for e in evaluations:
        with track.run(f"{verb}: {e.label}", part=part or len(evaluations) > 1, row=e.row, condition=e.condition,
                       **extra) as run:
            run.log_metrics(e.metrics)
            run.log_metrics({f"{k}_count": n for k, (_, n) in e.counts.items()})
            run.log_dict({"categories": e.categories, "matrix": e.matrix}, "confusion_matrix.json")
            if data:  # merged shards: their data are the shards'
                log_input(run, data, "evaluation")
        log.info("%s: accuracy %.4f on %d images (%s)", verb, e.metrics["accuracy"], e.counts["accuracy"][1], e.label)


def patch_setting(provenance: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Where and how the data's patches were put (the last deploy_patch on its way), for sweeps."""
    for record in reversed(provenance):
        if record.get("step") == "deploy_patch":
            return {k: record[k] for k in ("patch_scale", "patch_location", "rotation_max", "patch_placement")
                    if k in record}
    return {}


def _evaluation(row: str, condition: str, where: np.ndarray, out: Dict[str, np.ndarray], predicted: np.ndarray,
                class_names: Sequence[str], samples: List[Dict[str, Any]]) -> Evaluation:
    from advpatch.evaluation import classification_metrics, confusion_matrix, patch_metrics, rate_counts

    y, pred = out["y"][where], predicted[where]
    metrics = classification_metrics(y, out["probabilities"][where], len(class_names))
    if "patched" in out and "patch_target" in out and condition != "clean":
        metrics.update(patch_metrics(y, pred, out["patched"][where], out["patch_target"][where]))
        counts = rate_counts(y, pred, out["patched"][where], out["patch_target"][where])
    else:
        counts = rate_counts(y, pred)
    matrix = confusion_matrix(y, pred, len(class_names))
    shown: np.ndarray = np.arange(len(class_names))
    if len(class_names) > MAX_MATRIX_CLASSES:  # ImageNet: the classes that occur, not a 1000 x 1000 matrix
        shown = np.union1d(np.unique(y), np.unique(pred))
        matrix = matrix[np.ix_(shown, shown)]
    return Evaluation(row=row, condition=condition, metrics=metrics, counts={k: list(v) for k, v in counts.items()},
                      categories=[class_names[i] for i in shown], matrix=matrix.tolist(),
                      samples=samples)


def _samples(index: np.ndarray, out: Dict[str, np.ndarray], predicted: np.ndarray, class_names: Sequence[str],
             dataset: Dataset, first: int = 0, layout: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Up to :data:`NUM_SAMPLES` images spread evenly over the evaluation's source images (by
    ``source_index`` when the data has it, so clean and patched evaluations of the same test set
    show the same images), each a small PNG with its label and prediction. Of a shard (``layout``),
    those of the whole's that it holds, with the whole's indices."""
    from advpatch.data.readers import png_base64

    before, total = layout["part"] if layout else (0, len(index))
    if not total:
        return []
    source = out["source_index"][index] if "source_index" in out else index + (layout["offset"] if layout else 0)
    order = np.argsort(source, kind="stable")
    spread = np.unique(np.linspace(0, total - 1, min(NUM_SAMPLES, total)).round().astype(int)) - before
    chosen = index[order[spread[(spread >= 0) & (spread < len(order))]]]
    shift = layout["offset"] if layout else 0
    samples = []
    for i, image in zip(chosen, dataset.take(chosen + first)):
        p = int(predicted[i])
        samples.append({
            "index": int(i) + shift,
            "source_index": int(out["source_index"][i]) if "source_index" in out else int(i) + shift,
            "label": class_names[int(out["y"][i])], "predicted": class_names[p],
            "confidence": round(float(out["probabilities"][i, p]), 4),
            "patched": bool(out["patched"][i]) if "patched" in out else False, "png": png_base64(image),
        })
    return samples
