"""The work behind each component, callable without KFP.

Each function validates its parameters first (before any heavy import), does the work, logs it to
MLflow and returns a :class:`StepResult`. The KFP components in ``components/`` only translate
artifacts to paths and a :class:`StepResult` to KFP outputs.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from advpatch import params, settings
from advpatch.tracking import RunContext

log = logging.getLogger("advpatch")


@dataclass
class StepResult:
    """What a step reports: scalar metrics, an optional confusion matrix, and details for the
    machine-readable results (history, model names...)."""

    step: str
    label: str
    metrics: Dict[str, float] = field(default_factory=dict)
    confusion_categories: List[str] = field(default_factory=list)
    confusion_matrix: List[List[int]] = field(default_factory=list)
    details: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StepResult":
        return cls(**json.loads(text))


def setup_logging() -> None:
    settings.quiet_tensorflow()
    settings.no_telemetry()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _timed(step: str):
    """Log start, end and duration of a step."""

    def wrap(fn):
        def inner(*args, **kwargs):
            setup_logging()
            log.info("%s: start", step)
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                log.info("%s: done in %.1f s", step, time.monotonic() - t0)

        inner.__name__ = fn.__name__
        inner.__doc__ = fn.__doc__
        inner.__wrapped__ = fn  # type: ignore[attr-defined]
        return inner

    return wrap


# --------------------------------------------------------------------------- load_dataset
@_timed("load_dataset")
def load_dataset(
    source: str,
    output_path: str,
    *,
    split: str = "train",
    image_size: int = 0,
    color_mode: str = "auto",
    max_examples: int = 0,
    seed: int = 0,
    ctx: RunContext = RunContext(),
) -> StepResult:
    """Import ``source`` as a Dataset artifact at ``output_path`` (see :mod:`advpatch.sources`)."""
    from advpatch.sources import import_dataset

    params.check(split=split, image_size=image_size, color_mode=color_mode, max_examples=max_examples, seed=seed)
    call = dict(source=source, split=split, image_size=image_size, color_mode=color_mode,
                max_examples=max_examples, seed=seed)
    spec = import_dataset(source, output_path, **{k: v for k, v in call.items() if k != "source"})
    h, w, c = spec.image_shape
    log.info("load_dataset: wrote %d images %dx%dx%d in %d classes to %s", spec.num_examples, h, w, c,
             spec.num_classes, output_path)
    metrics = {"num_examples": float(spec.num_examples), "num_classes": float(spec.num_classes)}
    with _tracked("load_dataset", ctx, call) as run:
        run.log_metrics(metrics)
    return StepResult(
        step="load_dataset",
        label=f"{source} ({split})",
        metrics=metrics,
        details={"image_shape": [h, w, c], "class_names": spec.class_names},
    )


# --------------------------------------------------------------------------- train
@_timed("train")
def train(
    train_path: str,
    model_output_path: str,
    *,
    test_path: str = "",
    model_architecture: str = "le_net",
    optimizer: str = "adam",
    epochs: float = 10.0,
    batch_size: int = 32,
    learning_rate: float = 0.001,
    validation_split: float = 0.0,
    model_tag: str = "",
    register_model: bool = False,
    seed: int = 0,
    ctx: RunContext = RunContext(),
) -> StepResult:
    """Train ``model_architecture`` from random weights on the dataset at ``train_path``.

    Writes the Model artifact to ``model_output_path``; evaluates on ``test_path`` when given;
    logs (and, with ``register_model``, registers) the model in MLflow as
    ``{experiment}_{model_tag}_{model_architecture}``.
    """
    call = dict(model_architecture=model_architecture, optimizer=optimizer, epochs=epochs,
                batch_size=batch_size, learning_rate=learning_rate, validation_split=validation_split, seed=seed)
    params.check(**call)
    from advpatch.dataset import Dataset
    from advpatch.models import ModelInfo, build_model, check_fits, save_model

    train_set = Dataset(train_path)
    test_set = Dataset(test_path) if test_path else None
    check_fits(model_architecture, train_set.image_shape)
    if test_set is not None:
        _check_same_data_shape(train_set, test_set)
    log.info("train: %s on %s", model_architecture, train_set.summary())

    from advpatch import training
    from advpatch.evaluation import classification_metrics, predict

    training.seed_everything(seed)
    data = train_set.load()
    model = build_model(model_architecture, train_set.image_shape, len(train_set.class_names))
    history = training.fit(
        model, data["x"], data["y"], epochs=epochs, batch_size=batch_size, optimizer=optimizer,
        learning_rate=learning_rate, validation_split=validation_split, seed=seed,
    )
    metrics = {f"final_{k}": v[-1] for k, v in history.items()}
    if test_set is not None:
        out = predict(model, test_set, batch_size)
        test = classification_metrics(out["y"], out["probabilities"], len(test_set.class_names))
        metrics.update({"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
        log.info("train: test accuracy %.4f on %d images", test["accuracy"], len(test_set))

    info = ModelInfo(
        architecture=model_architecture,
        input_shape=train_set.image_shape,
        class_names=train_set.class_names,
        provenance={"step": "train", "train_data": train_set.spec.provenance, **call},
    )
    registered = ""
    details: Dict[str, Any] = {"history": history, "model_architecture": model_architecture}
    with _tracked("train", ctx, {**call, "model_tag": model_tag, "register_model": register_model}) as run:
        run.log_history(history)
        run.log_metrics(metrics)
        name = ""
        if register_model:
            from advpatch.tracking import registered_model_name

            name = registered_model_name(ctx.experiment, model_tag, model_architecture)
        uri, version = run.log_model(model, info.to_json(), registered_name=name)
        registered = uri if version else ""
        info.provenance["mlflow_model_uri"] = uri
        details.update({"mlflow_run_id": run.run_id, "model_uri": uri, "registered_model": name,
                        "registered_version": version})
    save_model(model, info, model_output_path)
    log.info("train: model written to %s%s", model_output_path, f", registered as {registered}" if registered else "")
    return StepResult(step="train", label=f"train {model_architecture}", metrics=metrics, details=details)


def _check_same_data_shape(a, b) -> None:
    if tuple(a.image_shape) != tuple(b.image_shape) or a.class_names != b.class_names:
        raise params.ParameterError(
            f"the test dataset ({b.summary()}) does not match the training dataset ({a.summary()})"
        )


# --------------------------------------------------------------------------- infer
@_timed("infer")
def infer(
    data_path: str,
    predictions_path: str,
    *,
    model_path: str = "",
    model_uri: str = "",
    model_architecture: str = "",
    batch_size: int = 256,
    seed: int = 0,
    label: str = "",
    ctx: RunContext = RunContext(),
) -> StepResult:
    """Evaluate a model on a dataset: metrics, a confusion matrix and per-image predictions.

    The model is a Model artifact folder (``model_path``) or a registered MLflow model
    (``model_uri``, ``models:/NAME/VERSION``): exactly one. ``model_architecture``, when given,
    must match the model's.
    """
    params.check(batch_size=batch_size, seed=seed)
    if model_architecture:
        params.check(model_architecture=model_architecture)
    if bool(model_path) == bool(model_uri):
        raise params.ParameterError(
            "infer needs exactly one model: a Model artifact or model_uri (models:/NAME/VERSION), "
            f"got {'both' if model_path else 'neither'}"
        )
    if model_uri and not model_uri.startswith(("models:/", "runs:/")):
        raise params.ParameterError(f"model_uri must look like 'models:/NAME/VERSION', got {model_uri!r}")
    from advpatch.dataset import Dataset
    from advpatch.models import ModelInfo, read_model_info

    dataset = Dataset(data_path)
    if model_path:
        info = read_model_info(model_path)
        _check_model_fits(info, dataset, model_architecture)
    from advpatch import training
    from advpatch.evaluation import classification_metrics, confusion_matrix, predict
    from advpatch.models import load_model

    training.seed_everything(seed)
    if model_path:
        model, info = load_model(model_path)
    else:
        from advpatch.tracking import load_registered_model

        model, meta = load_registered_model(model_uri)
        info = ModelInfo.from_json(meta, model_uri)
        _check_model_fits(info, dataset, model_architecture)
    log.info("infer: %s model on %s", info.architecture, dataset.summary())
    out = predict(model, dataset, batch_size)
    metrics = classification_metrics(out["y"], out["probabilities"], len(info.class_names))
    predicted = out["probabilities"].argmax(axis=1)
    matrix = confusion_matrix(out["y"], predicted, len(info.class_names))
    _write_predictions(predictions_path, out, predicted, info.class_names)
    label = label or f"{info.architecture} on {Path(data_path).name}"
    call = dict(batch_size=batch_size, seed=seed, label=label, model=model_uri or model_path,
                model_architecture=info.architecture)
    with _tracked("infer", ctx, call) as run:
        run.log_metrics(metrics)
        run.log_dict({"categories": info.class_names, "matrix": matrix.tolist()}, "confusion_matrix.json")
    log.info("infer: accuracy %.4f on %d images", metrics["accuracy"], len(dataset))
    return StepResult(
        step="infer",
        label=label,
        metrics=metrics,
        confusion_categories=info.class_names,
        confusion_matrix=matrix.tolist(),
        details={"model_architecture": info.architecture, "dataset": dataset.summary()},
    )


def _check_model_fits(info, dataset, model_architecture: str) -> None:
    if model_architecture and model_architecture != info.architecture:
        raise params.ParameterError(
            f"model_architecture is {model_architecture!r} but the model is a {info.architecture!r}"
        )
    if tuple(info.input_shape) != tuple(dataset.image_shape):
        raise params.ParameterError(
            f"the model takes {'x'.join(map(str, info.input_shape))} images but the dataset has "
            f"{'x'.join(map(str, dataset.image_shape))}: load the data with the model's image_size and color_mode"
        )
    if len(info.class_names) != len(dataset.class_names):
        raise params.ParameterError(
            f"the model has {len(info.class_names)} classes but the dataset has {len(dataset.class_names)}"
        )


def _write_predictions(path: str, out: Dict[str, Any], predicted, class_names: List[str]) -> None:
    """Per-image predictions as CSV (written under a temporary name, then renamed)."""
    extra = [k for k in out if k not in ("probabilities", "y")]
    tmp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "label", "predicted", "confidence", "label_name", "predicted_name", *extra])
            probs = out["probabilities"]
            for i, (y, p) in enumerate(zip(out["y"], predicted)):
                writer.writerow([i, int(y), int(p), f"{probs[i, p]:.6f}", class_names[y], class_names[p],
                                 *[_scalar(out[k][i]) for k in extra]])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


# --------------------------------------------------------------------------- report
@_timed("report")
def report(summary_paths: List[str], results_path: str, markdown_path: str, *, title: str = "advpatch results",
           ctx: RunContext = RunContext()) -> Dict[str, Any]:
    """Collect the steps' summaries (files written by :func:`to_kfp`) into ``results.json`` and a Markdown table; close the pipeline's
    MLflow run and attach both to it."""
    from advpatch.report import build_results, render_markdown
    from advpatch.tracking import configure, finish_pipeline_run

    results = build_results([StepResult.from_json(Path(p).read_text()) for p in summary_paths], title=title)
    _atomic_write(results_path, json.dumps(results, indent=1, sort_keys=True))
    _atomic_write(markdown_path, render_markdown(results))
    parent = finish_pipeline_run(ctx)
    if parent:
        import mlflow

        configure()
        client = mlflow.MlflowClient()
        client.log_dict(parent, results, "results.json")
        client.log_text(parent, render_markdown(results), "results.md")
    return results


def _atomic_write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def _tracked(step: str, ctx: RunContext, call: Dict[str, Any]):
    from advpatch.tracking import step_run

    return step_run(step, ctx, call)


# --------------------------------------------------------------------------- KFP outputs
def to_kfp(result: StepResult, metrics=None, classification_metrics=None, summary_path: str = "") -> None:
    """Copy a result into KFP output artifacts (duck-typed: no KFP import here).

    ``metrics`` gets every finite scalar (KFP's Metrics viewer); ``classification_metrics`` the
    confusion matrix (KFP's ClassificationMetrics viewer); ``summary_path`` the result as JSON for
    the pipeline's report step.
    """
    import math

    if metrics is not None:
        for name, value in result.metrics.items():
            if value is not None and math.isfinite(value):
                metrics.log_metric(name, float(value))
    if classification_metrics is not None and result.confusion_matrix:
        classification_metrics.log_confusion_matrix(result.confusion_categories, result.confusion_matrix)
    if summary_path:
        _atomic_write(summary_path, result.to_json())
