"""derandomized_smoothing: a training set and a test set -> a base classifier trained on ablated
views, and the smoothed classifier's predictions with a certificate for every test image."""

from __future__ import annotations

from typing import Any, Dict, List

from advpatch.steps._base import StepResult, log, step


@step("derandomized_smoothing")
def derandomized_smoothing(p, track, *, training_data: str, testing_data: str, model: str,
                           certificates: str) -> StepResult:
    """Train ``p.model_architecture`` on ablated views of the training images (a band of
    ``ablation_size`` columns, or a block, kept; see :mod:`advpatch.certified`), then classify
    every view of every test image and certify each prediction against a square patch of each of
    ``certify_patch_sizes``. Test data that holds clean images and patched copies (deploy_patch
    ``augment``) gives the clean and the patched evaluations of the comparison table (``row``);
    certified accuracy is over the clean images. The tests and ``make bench`` check every
    certificate against the worst case (:func:`advpatch.certified.worst_case_flips`)."""
    import numpy as np

    from advpatch import certified
    from advpatch.dataset import Dataset, DatasetError
    from advpatch.models import ModelInfo, check_buildable

    train_set, test_set = Dataset(training_data), Dataset(testing_data)
    if test_set.image_shape != train_set.image_shape or test_set.class_names != train_set.class_names:
        raise DatasetError(f"the test dataset ({test_set.summary()}) does not match the training dataset "
                           f"({train_set.summary()})")
    h, w, c = train_set.image_shape
    certified.kept_mask(p.ablation, p.ablation_size, 0, (h, w))  # the settings against the image size
    sizes = [int(s) for s in p.certify_patch_sizes]
    too_big = [s for s in sizes if s > min(h, w)]
    if too_big:
        raise DatasetError(f"certify_patch_sizes {too_big} do not fit {h}x{w} images")
    view_shape = (h, w, 2 * c)
    check_buildable(p.model_architecture, view_shape)

    from advpatch import training
    from advpatch.dataset import to_float
    from advpatch.models import build_model, save_model

    training.seed_everything(p.seed)
    data = train_set.load()
    net = build_model(p.model_architecture, view_shape, len(train_set.class_names))
    history = certified.fit_ablated(net, data["x"], data["y"], kind=p.ablation, size=p.ablation_size,
                                    epochs=p.epochs, batch_size=p.batch_size, learning_rate=p.learning_rate,
                                    seed=p.seed)
    test = test_set.load()
    votes = certified.votes_from(certified.view_probabilities(net, to_float(test["x"]), p.ablation, p.ablation_size),
                                 p.vote_threshold)
    counts = certified.counts(votes)
    predicted = certified.predict(counts)
    clean = ~test["patched"].astype(bool) if "patched" in test else np.ones(len(predicted), bool)
    y = test["y"]
    metrics: Dict[str, float] = {f"final_{k}": v[-1] for k, v in history.items()}
    rates: Dict[str, List[int]] = {}
    radius = np.zeros(len(y), np.int64)  # the largest certified patch size (0: none)
    for size in sorted(sizes):
        ok = certified.certify(counts, p.ablation, p.ablation_size, size)
        radius[ok] = size  # a certificate at a size holds at every smaller one: the largest stays
        hits = int((ok & clean & (predicted == y)).sum())
        rates[f"certified_accuracy_{size}"] = [hits, int(clean.sum())]
        metrics[f"certified_accuracy_{size}"] = hits / max(1, int(clean.sum()))
    log.info("derandomized_smoothing: clean accuracy %.4f, certified %s", float((predicted == y)[clean].mean()),
             ", ".join(f"{s}x{s} {metrics[f'certified_accuracy_{s}']:.3f}" for s in sorted(sizes)))
    _write_certificates(certificates, y, predicted, counts, radius, test)
    out = {**{k: v for k, v in test.items() if k != "x"},
           "probabilities": _shares(counts).astype(np.float32)}
    from advpatch.steps._evaluations import evaluate, has_patches, log_evaluations

    row = p.row or f"derandomized smoothing ({p.ablation} {p.ablation_size})"
    evaluations = evaluate(row, "split" if has_patches(test_set) else "clean", out, test_set.class_names, test_set)
    for e in evaluations:
        if e.condition == "clean":
            e.metrics.update({k: v for k, v in metrics.items() if k.startswith("certified_")})
            e.counts.update(rates)
    settings = p.pick("ablation", "ablation_size", "vote_threshold", "certify_patch_sizes")
    info = ModelInfo(architecture=p.model_architecture, input_shape=view_shape, class_names=train_set.class_names,
                     preprocessing=f"derandomized smoothing views: {p.ablation} {p.ablation_size}, (x, 1 - x) kept",
                     provenance={"step": "derandomized_smoothing", "train_data": train_set.spec.provenance,
                                 **settings, **p.pick("epochs", "batch_size", "learning_rate", "seed")})
    with track.run(f"derandomized_smoothing: {p.ablation} {p.ablation_size}") as run:
        run.log_input(training_data, "training")
        run.log_history(history)
        run.log_metrics(metrics)
    log_evaluations(track, evaluations, "certify", testing_data, part=True)
    save_model(net, info, model)
    return StepResult(step="derandomized_smoothing", label=f"derandomized smoothing, {p.ablation} {p.ablation_size}",
                      metrics=metrics, counts=rates, evaluations=evaluations,
                      details={"history": history, "certified_curve": {str(s): metrics[f"certified_accuracy_{s}"]
                                                                     for s in sorted(sizes)}, **settings},
                      outputs={"model": {"architecture": p.model_architecture, "ablation": p.ablation}})


def _shares(counts):
    """Vote shares as the smoothed classifier's probabilities (uniform where no view voted)."""
    import numpy as np

    total = counts.sum(axis=1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1), 1.0 / counts.shape[1])


def _write_certificates(path: str, y, predicted, counts, radius, data: Dict[str, Any]) -> None:
    """One CSV row per test image: label, smoothed prediction, its votes and the runner-up's, and
    the largest patch size its prediction is certified against (0: none)."""
    import csv

    import numpy as np

    from advpatch.files import atomic_file

    ranked = np.sort(counts, axis=1)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "predicted", "votes", "runner_up_votes", "certified_patch_size",
                         "patched"])
        patched = data.get("patched", np.zeros(len(y), bool))
        for i in range(len(y)):
            writer.writerow([i, int(y[i]), int(predicted[i]), int(counts[i, predicted[i]]), int(ranked[i, -2]),
                             int(radius[i]), bool(patched[i])])
