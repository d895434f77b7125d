"""patch_cleanser: a classifier, a training set and a test set -> PatchCleanser's double-masking
classifier around it (optionally after masked training), its predictions and a certificate for
every test image."""

from __future__ import annotations

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, log_input, step
from advpatch.steps._params import PatchCleanserParams


@step("patch_cleanser")
def patch_cleanser(p: PatchCleanserParams, track: Tracker, *, model: str, training_data: str, testing_data: str,
                   defended_model: str,
                   certificates: str) -> StepResult:
    """Wrap ``model`` (any Keras classifier advpatch can load) in PatchCleanser's double masking
    (see :mod:`advpatch.defences.patchcleanser`) with a mask set for ``mask_patch_size`` patches
    (``masks_per_side`` squared masks), after ``masked_training_epochs`` of masked training on the
    training images (0: the model as it is; with ``masked_training_architecture``, a fresh network of
    that architecture is trained from scratch instead, and defended, the given model fixing only the
    classes and the image shape). Classifies every test image and certifies each prediction against
    a square patch of each of ``certify_patch_sizes`` (each size its own mask set). Test data with
    patched copies (deploy_patch ``augment``) gives the clean and the patched evaluations of the
    comparison table (``row``); certified accuracy is over the clean images. The tests and ``make
    bench`` check every certificate against the worst case
    (:func:`advpatch.defences.patchcleanser.worst_case_flips`)."""
    import numpy as np

    from advpatch.defences import patchcleanser
    from advpatch.models import check_buildable, precheck
    from advpatch.steps import _certificates

    train_set, test_set = _certificates.check_data(training_data, testing_data,
                                                   [*p.certify_patch_sizes, p.mask_patch_size])
    h, w, _ = test_set.image_shape
    for size in [p.mask_patch_size, *sorted(p.certify_patch_sizes)]:  # every mask set can be made
        patchcleanser.mask_set((h, w), int(size), p.masks_per_side)
    num_classes = len(test_set.class_names)
    precheck(model, "", test_set.image_shape, num_classes)
    if p.masked_training_architecture:
        check_buildable(p.masked_training_architecture, test_set.image_shape)

    from advpatch.data.dataset import to_float
    from advpatch.models import load_model, save_model, training

    training.seed_everything(p.seed)
    net, info = load_model(model)
    if p.masked_training_architecture and p.masked_training_epochs:  # a fresh network, trained on masked views
        from advpatch.models import ModelInfo, build_model

        net = build_model(p.masked_training_architecture, test_set.image_shape, num_classes)
        info = ModelInfo(architecture=p.masked_training_architecture, input_shape=test_set.image_shape,
                         class_names=list(info.class_names),
                         provenance={"step": "patch_cleanser", "train_data": train_set.spec.provenance,
                                     "classes_from": info.architecture})
    masks = patchcleanser.mask_set((h, w), p.mask_patch_size, p.masks_per_side)
    history = {}
    if p.masked_training_epochs:
        data = train_set.load()
        history = patchcleanser.fit_masked(net, data["x"], data["y"], masks, epochs=p.masked_training_epochs,
                                           batch_size=p.batch_size, learning_rate=p.learning_rate, seed=p.seed,
                                           lr_decay=p.lr_decay)
    test = test_set.load()
    x = to_float(test["x"])
    defended = patchcleanser.PatchCleanserClassifier(net, info.class_names, p.mask_patch_size, p.masks_per_side)
    predicted = defended.predict_labels(x)
    passes = defended.forward_passes
    clean = ~test["patched"].astype(bool) if "patched" in test else np.ones(len(x), bool)

    def certify(size: int) -> np.ndarray:  # certificates are for clean images: a patched copy is never certified
        ok = np.zeros(len(x), bool)
        ok[clean] = defended.certify(x[clean], size, predicted[clean])
        return ok

    metrics, rates, radius, seconds = _certificates.curve("patch_cleanser", p.certify_patch_sizes, certify,
                                                          predicted, test)
    metrics.update({f"final_{k}": v[-1] for k, v in history.items()})
    _certificates.write_certificates(certificates, test, predicted, radius)
    trained = "masked training" if p.masked_training_epochs else "no masked training"
    row = p.row or f"PatchCleanser ({trained})"
    evaluations = _certificates.evaluations(row, test, np.eye(num_classes)[predicted], test_set,
                                            {k: v for k, v in metrics.items() if k.startswith("certified_")}, rates)
    settings = p.pick("mask_patch_size", "masks_per_side", "masked_training_epochs", "masked_training_architecture",
                      "certify_patch_sizes")
    info.provenance = {**info.provenance, "patch_cleanser": {**settings, **p.pick("batch_size", "learning_rate",
                                                                                   "lr_decay", "seed")}}
    info.defence = {"name": "patch_cleanser_masked" if p.masked_training_epochs else "patch_cleanser",
                    "image_shape": list(test_set.image_shape), "settings": p.pick("mask_patch_size", "masks_per_side")}
    with track.run(f"patch_cleanser: {trained}") as run:
        log_input(run, testing_data, "testing")
        if history:
            log_input(run, training_data, "training")
            run.log_history(history)
        run.log_metrics(metrics)
    from advpatch.steps._evaluations import log_evaluations

    log_evaluations(track, evaluations, "certify", testing_data, part=True)
    save_model(net, info, defended_model)
    log.info("patch_cleanser: %d masks, %d forward passes for the predictions", len(masks), passes)
    return StepResult(step="patch_cleanser", label=f"PatchCleanser, {trained}", metrics=metrics, counts=rates,
                      evaluations=evaluations,
                      details={"history": history, "certified_curve": _certificates.as_curve(metrics),
                               "certify_seconds": seconds, "defence": "PatchCleanser", **settings},
                      outputs={"defended_model": {"architecture": info.architecture, "masks": len(masks)}})
