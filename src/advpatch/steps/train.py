"""train: a Dataset artifact -> a trained Model artifact (and an MLflow model, optionally registered)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, log_input, step
from advpatch.steps._params import TrainParams

if TYPE_CHECKING:
    from advpatch.data.dataset import Dataset
    from advpatch.models import ModelInfo


@step("train")
def train(p: TrainParams, track: Tracker, *, training_data: str, model: str, testing_data: str = "") -> StepResult:
    """Train ``p.model_architecture`` from random weights on the dataset at ``training_data``.

    With ``apply_defense``, PGD adversarial training (``pgd_*``: L-inf radius, step, iterations,
    share of each batch made adversarial). With ``testing_data``, the metrics include test accuracy
    and accuracy under PGD at the same ``pgd_*`` settings, whether or not the model was trained
    against it; when the test data holds clean images and patched copies of them (deploy_patch
    ``augment``), those two figures are of the clean images, and the step also makes the clean and
    patched evaluations of the comparison table (``row``), as infer's ``condition='split'`` does.
    Writes the Model artifact to ``model``; logs (and, with ``register_model``, registers) the
    model in MLflow as ``{experiment}_{model_tag}_{model_architecture}``.
    """
    from advpatch.data.dataset import Dataset
    from advpatch.errors import DatasetError
    from advpatch.models import ModelInfo, check_buildable

    train_set = Dataset(training_data)
    test_set = Dataset(testing_data) if testing_data else None
    train_set.check_trainable(f"training_data ({training_data})")
    check_buildable(p.model_architecture, train_set.image_shape)
    if test_set is not None and (test_set.image_shape != train_set.image_shape
                                 or test_set.class_names != train_set.class_names):
        raise DatasetError(f"the test dataset ({test_set.summary()}) does not match the training dataset "
                           f"({train_set.summary()})")
    log.info("train: %s on %s", p.model_architecture, train_set.summary())

    from advpatch.models import build_model, save_model, training

    fit = p.pick("model_architecture", "optimizer", "epochs", "batch_size", "learning_rate", "validation_split", "seed")
    pgd = p.pick("pgd_eps", "pgd_eps_step", "pgd_max_iter", "pgd_ratio")
    training.seed_everything(p.seed)
    x: Any  # images in memory (uint8 array) or, streamed, the Dataset itself
    y: Any
    if training.in_memory(train_set):
        data = train_set.load()
        x, y = data["x"], data["y"]
    else:  # larger than the memory budget: the shards stream through tf.data
        x, y = train_set, None
    net = build_model(p.model_architecture, train_set.image_shape, len(train_set.class_names))
    fit_args = {k: v for k, v in fit.items() if k != "model_architecture"}
    if p.apply_defense:
        history = training.fit_adversarial(net, x, y, **fit_args, **pgd)
    else:
        history = training.fit(net, x, y, **fit_args)
    info = ModelInfo(architecture=p.model_architecture, input_shape=train_set.image_shape,
                     class_names=train_set.class_names,
                     provenance={"step": "train", "train_data": train_set.spec.provenance, **fit,
                                 "apply_defense": p.apply_defense, **(pgd if p.apply_defense else {})})
    metrics = {f"final_{k}": v[-1] for k, v in history.items()}
    counts: Dict[str, List[int]] = {}
    evaluations: List[Any] = []
    if test_set is not None:
        test_metrics, counts, evaluations = _test(net, info, test_set, p)
        metrics.update(test_metrics)

    details: Dict[str, Any] = {"history": history, "model_architecture": p.model_architecture}
    with track.run(f"train: {p.row or p.model_tag or p.model_architecture}") as run:
        log_input(run, training_data, "training")
        run.log_history(history)
        run.log_metrics(metrics)
        name = ""
        if p.register_model:
            from advpatch.tracking.registry import registered_model_name

            name = registered_model_name(track.ctx.experiment, p.model_tag, p.model_architecture)
        uri, version = run.log_model(net, info.to_json(), registered_name=name)
        info.provenance["mlflow_model_uri"] = uri
        details.update({"mlflow_run_id": run.run_id, "model_uri": uri, "registered_model": name,
                        "registered_version": version})
    if evaluations and test_set is not None:
        from advpatch.steps._evaluations import log_evaluations, patch_setting

        details["setting"] = patch_setting(test_set.spec.provenance)
        log_evaluations(track, evaluations, "evaluate", testing_data, part=True, **details["setting"])
    save_model(net, info, model)
    log.info("train: model written to %s%s", model, f", registered as {uri}" if version else "")
    label = (f"train {p.model_architecture}" + (f" '{p.model_tag}'" if p.model_tag else "")
             + (" (PGD adversarial training)" if p.apply_defense else ""))
    return StepResult(step="train", label=label, metrics=metrics, counts=counts, details=details,
                      evaluations=evaluations,
                      outputs={"model": {"architecture": p.model_architecture, "mlflow_model_uri": uri}})


def _test(net: Any, info: ModelInfo, test_set: Dataset, p: TrainParams
          ) -> Tuple[Dict[str, float], Dict[str, List[int]], List[Any]]:
    """Accuracy and loss on the test set's clean images and accuracy under PGD at the step's
    ``pgd_*`` settings, with the (correct, count) behind each accuracy; and, when the test set holds
    patched copies too, the clean and patched evaluations."""
    import numpy as np

    from advpatch.evaluation import classification_metrics, predict
    from advpatch.models import training
    from advpatch.models.classifier import Classifier
    from advpatch.steps._evaluations import evaluate, has_patches

    classifier = Classifier(net, info)
    out = predict(classifier, test_set, p.batch_size)
    split = has_patches(test_set)
    clean = ~out["patched"].astype(bool) if split else np.ones(len(out["y"]), bool)
    test = classification_metrics(out["y"][clean], out["probabilities"][clean], len(test_set.class_names))
    robust_hits, n, start = 0, 0, 0
    for batch in test_set.batches(4096):  # streamed: a test set larger than memory works too
        keep = clean[start:start + len(batch["y"])]
        start += len(batch["y"])
        if keep.any():
            k = int(keep.sum())
            robust_hits += round(k * training.pgd_accuracy(
                classifier, batch["x"][keep], batch["y"][keep], eps=p.pgd_eps, eps_step=p.pgd_eps_step,
                max_iter=p.pgd_max_iter, seed=p.seed, offset=n))
            n += k
    robust = robust_hits / n
    log.info("train: test accuracy %.4f, under PGD (eps %s) %.4f, on %d images", test["accuracy"], p.pgd_eps, robust,
             n)
    counts = {"test_accuracy": [round(test["accuracy"] * n), n], "test_pgd_accuracy": [robust_hits, n]}
    evaluations = evaluate(p.row or p.model_tag or info.architecture, "split", out, info.class_names, test_set) \
        if split else []
    return ({"test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_pgd_accuracy": robust}, counts,
            evaluations)
