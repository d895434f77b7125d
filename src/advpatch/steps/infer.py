"""infer: a model and a Dataset artifact -> metrics with their counts, confusion matrices and
per-image predictions."""

from __future__ import annotations

from typing import Any, Dict, List

from advpatch.results import Evaluation, StepResult
from advpatch.steps._base import Tracker, log, step
from advpatch.steps._params import InferParams


@step("infer")
def infer(p: InferParams, track: Tracker, *, data: str, predictions: str, model: str = "",
          shard_result: str = "") -> StepResult:
    """Evaluate a model on the dataset at ``data``: metrics, a confusion matrix and per-image
    predictions (CSV at ``predictions``). On patched data, also accuracy on patched and unpatched
    images and the targeted success rate. Every rate comes with its count.

    The model is a Model artifact folder (``model``) or a registered MLflow model (``model_uri``):
    exactly one. ``model_architecture``, when given, must match the model's. ``row`` and
    ``condition`` place the evaluation in the comparison table; ``condition='split'`` makes two
    evaluations of data that holds clean images and patched copies of them (deploy_patch's
    ``augment``): one of the clean images, one of the patched.

    Of a shard (deploy_patch's ``shard_index``, or infer's own: this shard of ``data``'s rows), the
    per-image predictions and the evaluations go to ``shard_result`` too, for merge_evaluations.
    """
    from advpatch.data.dataset import Dataset
    from advpatch.models import check_choice, precheck
    from advpatch.params import ParameterError
    from advpatch.steps import _shards
    from advpatch.steps._evaluations import evaluate, has_patches, log_evaluations, patch_setting

    check_choice(model, p.model_uri)
    dataset = Dataset(data)
    start, stop = _shards.bounds(len(dataset), p.shard_index, p.shard_count)
    layout = _shards.of_rows(dataset, p.shard_index, p.shard_count, start, stop)
    precheck(model, p.model_uri, dataset.image_shape, len(dataset.class_names), p.model_architecture, defended=True)
    if p.condition == "split" and not has_patches(dataset):
        raise ParameterError(f"condition='split' needs data with patched images and their provenance "
                             f"(deploy_patch's output); {dataset.summary()} has none")

    from advpatch.defences.base import defended_classifier
    from advpatch.evaluation import predict, write_predictions
    from advpatch.models import resolve, training

    training.seed_everything(p.seed)
    net, info = resolve(model, p.model_uri, dataset.image_shape, len(dataset.class_names), p.model_architecture,
                        defended=True)
    log.info("infer: %s model on %s", info.architecture, dataset.summary())
    from advpatch.parallel import capped, model_bytes

    batch = capped(p.batch_size, p.memory_budget_mb, model_bytes(net, info.input_shape))
    if batch < p.batch_size:
        log.info("infer: batches of %d images, what memory_budget_mb=%d holds (batch_size %d)", batch,
                 p.memory_budget_mb, p.batch_size)
    out = predict(defended_classifier(net, info), dataset, batch, start, stop, layout or None)
    write_predictions(predictions, out, out["probabilities"].argmax(axis=1), info.class_names)
    row = p.row or info.architecture
    evaluations = evaluate(row, p.condition, out, info.class_names, dataset, layout or None, start)
    setting = patch_setting(dataset.spec.provenance)
    log_evaluations(track, evaluations, "infer", model=p.model_uri or model, data=data, **setting)
    details = {"model_architecture": info.architecture, "dataset": dataset.summary(), "setting": setting}
    if shard_result:
        _shards.save(shard_result, layout, out, evaluations, details, p.condition, info.class_names,
                     dataset.image_shape)
    return result(row, evaluations, details)


def result(row: str, evaluations: List[Evaluation], details: Dict[str, Any]) -> StepResult:
    """infer's result: its evaluations, their metrics (prefixed with the condition where there are two)."""
    metrics = evaluations[0].metrics if len(evaluations) == 1 else {
        f"{e.condition}_{k}": v for e in evaluations for k, v in e.metrics.items()}
    return StepResult(step="infer", label=f"{row} / {'+'.join(e.condition for e in evaluations)}", metrics=metrics,
                      evaluations=evaluations, details=details)
