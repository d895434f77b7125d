"""infer: a model and a Dataset artifact -> metrics, a confusion matrix and per-image predictions."""

from __future__ import annotations

from advpatch.steps._base import StepResult, log, step


@step("infer")
def infer(p, track, *, data: str, predictions: str, model: str = "") -> StepResult:
    """Evaluate a model on the dataset at ``data``: metrics, a confusion matrix and per-image
    predictions (CSV at ``predictions``). On patched data, also accuracy on patched and unpatched
    images and the targeted success rate.

    The model is a Model artifact folder (``model``) or a registered MLflow model (``model_uri``):
    exactly one. ``model_architecture``, when given, must match the model's. ``row`` and
    ``condition`` place the evaluation in the comparison table.
    """
    from advpatch.dataset import Dataset
    from advpatch.models import check_choice, precheck

    check_choice(model, p.model_uri)
    dataset = Dataset(data)
    precheck(model, p.model_uri, dataset.image_shape, len(dataset.class_names), p.model_architecture)
    patched = "patched" in dataset.spec.columns and "patch_target" in dataset.spec.columns
    condition = p.condition if p.condition != "auto" else ("patched" if patched else "clean")

    from advpatch import training
    from advpatch.classifier import Classifier
    from advpatch.evaluation import (classification_metrics, confusion_matrix, patch_metrics, predict,
                                     write_predictions)
    from advpatch.models import resolve

    training.seed_everything(p.seed)
    net, info = resolve(model, p.model_uri, dataset.image_shape, len(dataset.class_names), p.model_architecture)
    log.info("infer: %s model on %s", info.architecture, dataset.summary())
    out = predict(Classifier(net, info), dataset, p.batch_size)
    metrics = classification_metrics(out["y"], out["probabilities"], len(info.class_names))
    predicted = out["probabilities"].argmax(axis=1)
    if patched:
        metrics.update(patch_metrics(out["y"], predicted, out["patched"], out["patch_target"]))
    matrix = confusion_matrix(out["y"], predicted, len(info.class_names))
    write_predictions(predictions, out, predicted, info.class_names)
    row = p.row or info.architecture
    with track.run(model=p.model_uri or model, row=row, condition=condition) as run:
        run.log_metrics(metrics)
        run.log_dict({"categories": info.class_names, "matrix": matrix.tolist()}, "confusion_matrix.json")
    log.info("infer: accuracy %.4f on %d images (%s / %s)", metrics["accuracy"], len(dataset), row, condition)
    return StepResult(
        step="infer", label=f"{row} / {condition}", row=row, condition=condition, metrics=metrics,
        confusion_categories=info.class_names, confusion_matrix=matrix.tolist(),
        details={"model_architecture": info.architecture, "dataset": dataset.summary()},
    )
