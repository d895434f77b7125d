"""derandomized_smoothing: a training set and a test set -> a base classifier trained on ablated
views, and the smoothed classifier's predictions with a certificate for every test image."""

from __future__ import annotations

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log_input, step
from advpatch.steps._params import DerandomizedSmoothingParams


@step("derandomized_smoothing")
def derandomized_smoothing(p: DerandomizedSmoothingParams, track: Tracker, *, training_data: str, testing_data: str,
                           model: str,
                           certificates: str) -> StepResult:
    """Train ``p.model_architecture`` on ablated views of the training images (a band of
    ``ablation_size`` columns or rows, every column band and every row band (``cross``), or a block,
    kept; see :mod:`advpatch.defences.smoothing`), then classify every view of every test image and
    certify each prediction against a square patch of each of ``certify_patch_sizes``. Test data
    that holds clean images and patched copies (deploy_patch ``augment``) gives the clean and the
    patched evaluations of the comparison table (``row``); certified accuracy is over the clean
    images. The tests and ``make bench`` check every certificate against the worst case
    (:func:`advpatch.defences.smoothing.worst_case_flips`)."""
    import numpy as np

    from advpatch.defences import smoothing as certified
    from advpatch.models import ModelInfo, check_buildable
    from advpatch.steps import _certificates

    train_set, test_set = _certificates.check_data(training_data, testing_data, p.certify_patch_sizes)
    h, w, c = train_set.image_shape
    certified.kept_mask(p.ablation, p.ablation_size, 0, (h, w))  # the settings against the image size
    view_shape = (h, w, 2 * c)
    check_buildable(p.model_architecture, view_shape)

    from advpatch.data.dataset import to_float
    from advpatch.models import build_model, save_model, training

    training.seed_everything(p.seed)
    data = train_set.load()
    net = build_model(p.model_architecture, view_shape, len(train_set.class_names))
    history = certified.fit_ablated(net, data["x"], data["y"], kind=p.ablation, size=p.ablation_size,
                                    epochs=p.epochs, batch_size=p.batch_size, learning_rate=p.learning_rate,
                                    seed=p.seed, lr_decay=p.lr_decay)
    test = test_set.load()
    smoothed = certified.SmoothedClassifier(net, train_set.class_names, p.ablation, p.ablation_size, p.vote_threshold)
    counts = smoothed.counts(to_float(test["x"]))
    predicted = certified.predict(counts)
    metrics, rates, radius, seconds = _certificates.curve(
        "derandomized_smoothing", p.certify_patch_sizes,
        lambda size: certified.certify(counts, p.ablation, p.ablation_size, size), predicted, test)
    metrics = {**{f"final_{k}": v[-1] for k, v in history.items()}, **metrics}
    ranked = np.sort(counts, axis=1)
    _certificates.write_certificates(certificates, test, predicted, radius, votes=counts[np.arange(len(counts)),
                                     predicted], runner_up_votes=ranked[:, -2])
    row = p.row or f"derandomized smoothing ({p.ablation} {p.ablation_size})"
    evaluations = _certificates.evaluations(row, test, certified.shares(counts), test_set,
                                            {k: v for k, v in metrics.items() if k.startswith("certified_")}, rates)
    settings = p.pick("ablation", "ablation_size", "vote_threshold", "certify_patch_sizes")
    info = ModelInfo(architecture=p.model_architecture, input_shape=view_shape, class_names=train_set.class_names,
                     preprocessing=f"derandomized smoothing views: {p.ablation} {p.ablation_size}, (x, 1 - x) kept",
                     provenance={"step": "derandomized_smoothing", "train_data": train_set.spec.provenance,
                                 **settings, **p.pick("epochs", "batch_size", "learning_rate", "lr_decay", "seed")},
                     defence={"name": "derandomized_smoothing", "image_shape": [h, w, c],
                              "settings": p.pick("ablation", "ablation_size", "vote_threshold")})
    with track.run(f"derandomized_smoothing: {p.ablation} {p.ablation_size}") as run:
        log_input(run, training_data, "training")
        run.log_history(history)
        run.log_metrics(metrics)
    from advpatch.steps._evaluations import log_evaluations

    log_evaluations(track, evaluations, "certify", testing_data, part=True)
    save_model(net, info, model)
    return StepResult(step="derandomized_smoothing", label=f"derandomized smoothing, {p.ablation} {p.ablation_size}",
                      metrics=metrics, counts=rates, evaluations=evaluations,
                      details={"history": history, "certified_curve": _certificates.as_curve(metrics),
                               "certify_seconds": seconds, "defence": "derandomized smoothing", **settings},
                      outputs={"model": {"architecture": p.model_architecture, "ablation": p.ablation}})

