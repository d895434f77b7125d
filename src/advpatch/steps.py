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

import numpy as np

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
    apply_defense: bool = False,
    pgd_eps: float = 0.1,
    pgd_eps_step: float = 0.025,
    pgd_max_iter: int = 10,
    pgd_ratio: float = 0.5,
    load_dataset_from_mlruns: bool = False,
    training_dataset_run_id: str = "",
    dataset_tar_name: str = "adv_testing.tar",
    dataset_name: str = "adversarial_patched_data",
    seed: int = 0,
    ctx: RunContext = RunContext(),
) -> StepResult:
    """Train ``model_architecture`` from random weights on the dataset at ``train_path``.

    With ``apply_defense``, PGD adversarial training (``pgd_*``: L-inf radius, step, iterations,
    share of each batch made adversarial). With ``load_dataset_from_mlruns``, the training data is
    the dataset an earlier MLflow run (``training_dataset_run_id``) logged as ``dataset_tar_name``
    holding ``dataset_name/``. With test data, the metrics include accuracy under PGD at the same
    ``pgd_*`` settings, whether or not the model was trained against it.

    Writes the Model artifact to ``model_output_path``; evaluates on ``test_path`` when given;
    logs (and, with ``register_model``, registers) the model in MLflow as
    ``{experiment}_{model_tag}_{model_architecture}``.
    """
    call = dict(model_architecture=model_architecture, optimizer=optimizer, epochs=epochs,
                batch_size=batch_size, learning_rate=learning_rate, validation_split=validation_split, seed=seed)
    params.check(**call)
    pgd = dict(pgd_eps=pgd_eps, pgd_eps_step=pgd_eps_step, pgd_max_iter=pgd_max_iter, pgd_ratio=pgd_ratio)
    params.check(**pgd)
    import tempfile

    from advpatch.dataset import Dataset
    from advpatch.models import ModelInfo, build_model, check_fits, save_model

    scratch = tempfile.TemporaryDirectory()
    train_set = Dataset(_input_dataset(train_path, load_dataset_from_mlruns, training_dataset_run_id,
                                       dataset_tar_name, dataset_name, scratch.name))
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
    fit_args = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, learning_rate=learning_rate,
                    validation_split=validation_split, seed=seed)
    if apply_defense:
        history = training.fit_adversarial(model, data["x"], data["y"], **fit_args, **pgd)
    else:
        history = training.fit(model, data["x"], data["y"], **fit_args)
    scratch.cleanup()
    metrics = {f"final_{k}": v[-1] for k, v in history.items()}
    if test_set is not None:
        out = predict(model, test_set, batch_size)
        test = classification_metrics(out["y"], out["probabilities"], len(test_set.class_names))
        test_data = test_set.load()
        robust = training.pgd_accuracy(model, test_data["x"], test_data["y"], eps=pgd_eps, eps_step=pgd_eps_step,
                                       max_iter=pgd_max_iter, seed=seed)
        metrics.update({"test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_pgd_accuracy": robust})
        log.info("train: test accuracy %.4f, under PGD (eps %s) %.4f, on %d images", test["accuracy"], pgd_eps,
                 robust, len(test_set))

    info = ModelInfo(
        architecture=model_architecture,
        input_shape=train_set.image_shape,
        class_names=train_set.class_names,
        provenance={"step": "train", "train_data": train_set.spec.provenance, **call,
                    "apply_defense": apply_defense, **(pgd if apply_defense else {})},
    )
    registered = ""
    details: Dict[str, Any] = {"history": history, "model_architecture": model_architecture}
    tracked = {**call, "model_tag": model_tag, "register_model": register_model, "apply_defense": apply_defense,
               **pgd, "load_dataset_from_mlruns": load_dataset_from_mlruns}
    with _tracked("train", ctx, tracked) as run:
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
    label = (f"train {model_architecture}" + (f" '{model_tag}'" if model_tag else "")
             + (" (PGD adversarial training)" if apply_defense else ""))
    return StepResult(step="train", label=label, metrics=metrics, details=details)


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
    _check_model_choice(model_path, model_uri, model_architecture)
    from advpatch.dataset import Dataset

    dataset = Dataset(data_path)
    _check_model_artifact(model_path, model_architecture, dataset)
    from advpatch import training
    from advpatch.evaluation import classification_metrics, confusion_matrix, patch_metrics, predict

    training.seed_everything(seed)
    model, info = _load_any_model(model_path, model_uri, model_architecture, dataset)
    log.info("infer: %s model on %s", info.architecture, dataset.summary())
    out = predict(model, dataset, batch_size)
    metrics = classification_metrics(out["y"], out["probabilities"], len(info.class_names))
    predicted = out["probabilities"].argmax(axis=1)
    if "patched" in out and "patch_target" in out:
        metrics.update(patch_metrics(out["y"], predicted, out["patched"], out["patch_target"]))
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


# --------------------------------------------------------------------------- the patch attack
PATCH_COLUMNS = {
    "patched": "bool",
    "patch_index": "int16",
    "patch_target": "int16",
    "patch_scale": "float32",
    "patch_angle": "float32",
    "patch_x": "float32",
    "patch_y": "float32",
    "source_index": "int64",
}
"""Per-image provenance deploy_patch writes: was it patched, with which patch (and so target),
at which scale, angle and centre, and which input image it came from."""


def _check_model_choice(model_path: str, model_uri: str, model_architecture: str) -> None:
    """Exactly one model, named the right way (cheap: before any heavy import)."""
    if model_architecture:
        params.check(model_architecture=model_architecture)
    if bool(model_path) == bool(model_uri):
        raise params.ParameterError(
            "give exactly one model: a Model artifact or model_uri (models:/NAME/VERSION), "
            f"got {'both' if model_path else 'neither'}"
        )
    if model_uri and not model_uri.startswith(("models:/", "runs:/")):
        raise params.ParameterError(f"model_uri must look like 'models:/NAME/VERSION', got {model_uri!r}")


def _check_model_artifact(model_path: str, model_architecture: str, dataset) -> None:
    """A Model artifact's metadata against the data, before TensorFlow is imported."""
    if model_path:
        from advpatch.models import read_model_info

        _check_model_fits(read_model_info(model_path), dataset, model_architecture)


def _load_any_model(model_path: str, model_uri: str, model_architecture: str, dataset):
    """(keras model, ModelInfo) from a Model artifact or a registered model, checked against the data."""
    from advpatch.models import ModelInfo, load_model

    if model_path:
        return load_model(model_path)
    from advpatch.tracking import load_registered_model

    model, meta = load_registered_model(model_uri)
    info = ModelInfo.from_json(meta, model_uri)
    _check_model_fits(info, dataset, model_architecture)
    return model, info


@_timed("gen_patch")
def gen_patch(
    data_path: str,
    patches_path: str,
    *,
    model_path: str = "",
    model_uri: str = "",
    model_architecture: str = "",
    learning_rate: float = 0.1,
    max_iter: int = 500,
    patch_target: int = -1,
    num_patch: int = 1,
    num_patch_gen_samples: int = 40,
    rotation_max: float = 22.5,
    scale_min: float = 0.1,
    scale_max: float = 1.0,
    patch_location: str = "random",
    patch_shape: str = "square",
    patch_size: int = 0,
    batch_size: int = 40,
    lr_decay: float = 0.3,
    patch_loss: str = "auto",
    seed: int = 0,
    ctx: RunContext = RunContext(),
) -> StepResult:
    """Generate ``num_patch`` targeted patches against a model (see :mod:`advpatch.patches`).

    Each patch gets its target (``patch_target``, or a random class per patch when -1) and its own
    ``num_patch_gen_samples`` generation images, drawn from those whose label is not the target.
    """
    from advpatch import patches

    call = dict(learning_rate=learning_rate, max_iter=max_iter, patch_target=patch_target, num_patch=num_patch,
                num_patch_gen_samples=num_patch_gen_samples, batch_size=batch_size, patch_shape=patch_shape,
                patch_size=patch_size, lr_decay=lr_decay, patch_loss=patch_loss, seed=seed)
    params.check(**call)
    patches.check_placement(rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max,
                            location=patch_location)
    _check_model_choice(model_path, model_uri, model_architecture)
    from advpatch.dataset import Dataset, to_float

    dataset = Dataset(data_path)
    _check_model_artifact(model_path, model_architecture, dataset)
    n_classes = len(dataset.class_names)
    params.require(patch_target < n_classes,
                   f"patch_target must be -1 (random) or a class index in [0, {n_classes - 1}], got {patch_target}")
    h, w, c = dataset.image_shape
    size = patch_size or min(h, w)
    from advpatch import training

    training.seed_everything(seed)
    model, info = _load_any_model(model_path, model_uri, model_architecture, dataset)
    data = dataset.load()
    rng = np.random.default_rng(seed)
    targets = np.array([patch_target if patch_target >= 0 else int(rng.integers(n_classes)) for _ in range(num_patch)],
                       dtype=np.int32)
    mask = patches.make_mask(size, patch_shape)
    loss = patches.resolve_loss(patch_loss, patch_location)
    optimizer = patches.PatchOptimizer(model, dataset.image_shape, size, mask, learning_rate, lr_decay=lr_decay,
                                       loss=loss)
    placement = dict(rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max, location=patch_location)
    results, patch_list = [], []
    for i, target in enumerate(targets):
        candidates = np.flatnonzero(data["y"] != target)
        if len(candidates) == 0:
            raise params.ParameterError(f"no generation images outside target class {target}")
        chosen = rng.choice(candidates, min(num_patch_gen_samples, len(candidates)), replace=False)
        x = to_float(data["x"][chosen])
        t0 = time.monotonic()
        patch, history = patches.generate_patch(optimizer, x, int(target), max_iter=max_iter, batch_size=batch_size,
                                                rng=rng, **placement)
        seconds = time.monotonic() - t0
        # success on the generation images, at fresh placements from the same distribution
        check = patches.PatchSet(patch[None], mask[None], np.array([target]), dataset.class_names, dataset.image_shape)
        where = patches.sample_placements(rng, len(chosen), (h, w), mask=mask, **placement)
        patched = patches.apply_patches(data["x"][chosen], check, np.zeros(len(chosen), np.int32), where)
        score = patches.targeted_success(model, x, to_float(patched), data["y"][chosen], np.full(len(chosen), target))
        results.append({"target": int(target), "final_loss": history[-1], "first_loss": history[0],
                        "gen_targeted_success_rate": score["targeted_success_rate"],
                        "gen_patched_accuracy": score["patched_accuracy"], "seconds": seconds,
                        "num_gen_samples": float(len(chosen))})
        patch_list.append(patch)
        log.info("gen_patch: patch %d target %s: loss %.3f -> %.3f, success on generation images %.3f (%.1f s)",
                 i, dataset.class_names[target], history[0], history[-1], score["targeted_success_rate"], seconds)
    settings_ = {**call, **placement, "patch_size": size, "loss": loss, "model_architecture": info.architecture,
                 "model": model_uri or info.provenance.get("mlflow_model_uri", model_path),
                 "data": dataset.spec.provenance}
    patch_set = patches.PatchSet(np.stack(patch_list), np.repeat(mask[None], num_patch, 0), targets,
                                 dataset.class_names, dataset.image_shape, settings_, results)
    metrics: Dict[str, float] = {}
    for i, r in enumerate(results):
        metrics.update({f"patch_{i}_{k}": float(v) for k, v in r.items() if k != "num_gen_samples"})
    metrics["mean_gen_targeted_success_rate"] = float(np.mean([r["gen_targeted_success_rate"] for r in results]))
    metrics["mean_final_loss"] = float(np.mean([r["final_loss"] for r in results]))
    with _tracked("gen_patch", ctx, {**call, **placement, "model": model_uri or model_path}) as run:
        run.log_metrics(metrics)
        patch_set.save(patches_path)
        run.log_artifacts(patches_path, "patches")
    return StepResult(
        step="gen_patch",
        label=f"gen_patch x{num_patch} ({patch_location}, scale {scale_min}-{scale_max})",
        metrics=metrics,
        details={"targets": [dataset.class_names[t] for t in targets], "per_patch": results, **placement},
    )


def distance_stats(clean: np.ndarray, patched: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-image distances between float images in [0, 1]: l_inf, l1, l2, cosine similarity and
    the 1-D Wasserstein distance between their pixel-value distributions."""
    a = clean.reshape(len(clean), -1).astype(np.float64)
    b = patched.reshape(len(patched), -1).astype(np.float64)
    d = b - a
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.divide((a * b).sum(axis=1), norms, out=np.ones(len(a)), where=norms > 0)
    return {
        "l_inf": np.abs(d).max(axis=1),
        "l1": np.abs(d).sum(axis=1),
        "l2": np.sqrt((d * d).sum(axis=1)),
        "cosine_similarity": cos,
        "wasserstein": np.abs(np.sort(a, axis=1) - np.sort(b, axis=1)).mean(axis=1),
    }


def summarize(values: np.ndarray) -> Dict[str, float]:
    """mean, median, stdev, iqr, min, max."""
    if len(values) == 0:
        return {}
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"mean": float(values.mean()), "median": float(med), "stdev": float(values.std()),
            "iqr": float(q3 - q1), "min": float(values.min()), "max": float(values.max())}


@_timed("deploy_patch")
def deploy_patch(
    data_path: str,
    patches_path: str,
    output_path: str,
    *,
    patch_deployment_method: str = "corrupt",
    patch_application_rate: float = 1.0,
    patch_scale: float = 0.4,
    batch_size: int = 1024,
    rotation_max: float = 22.5,
    scale_min: float = 0.1,
    scale_max: float = 1.0,
    patch_location: str = "random",
    seed: int = 0,
    output_tar_name: str = "adv_testing.tar",
    output_dataset_name: str = "adversarial_patched_data",
    ctx: RunContext = RunContext(),
) -> StepResult:
    """Put patches from a patch set on a dataset.

    Exactly ``round(patch_application_rate * n)`` images (drawn from ``seed``) get a patch, each a
    patch of the set drawn at random, at ``patch_scale`` (0: a scale drawn from
    ``[scale_min, scale_max]``), a rotation in ``[-rotation_max, rotation_max]`` and a position from
    ``patch_location``. ``corrupt`` replaces those images; ``augment`` keeps every original and
    adds the patched copies after each batch's originals.
    """
    from advpatch import patches
    from advpatch.dataset import Dataset, DatasetWriter, to_float

    call = dict(patch_deployment_method=patch_deployment_method, patch_application_rate=patch_application_rate,
                batch_size=batch_size, seed=seed)
    params.check(**call)
    patches.check_placement(rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max,
                            location=patch_location, patch_scale=patch_scale)
    dataset = Dataset(data_path)
    patch_set = patches.PatchSet.load(patches_path)
    h, w, c = dataset.image_shape
    if patch_set.patches.shape[-1] != c:
        raise params.ParameterError(
            f"the patches have {patch_set.patches.shape[-1]} channels but the dataset's images have {c}"
        )
    if len(patch_set.class_names) != len(dataset.class_names):
        raise params.ParameterError(
            f"the patches target a {len(patch_set.class_names)}-class model but the dataset has "
            f"{len(dataset.class_names)} classes"
        )
    if dataset.spec.columns:
        log.warning("deploy_patch: dropping the input's per-image columns %s", sorted(dataset.spec.columns))
    n = len(dataset)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: int(round(patch_application_rate * n))]] = True
    which = rng.integers(0, len(patch_set), n).astype(np.int16)
    # every patch of the set must fit where its image's placement puts it: the union of the masks
    where = patches.sample_placements(rng, n, (h, w), rotation_max=rotation_max, scale_min=scale_min,
                                      scale_max=scale_max, location=patch_location, patch_scale=patch_scale,
                                      mask=patch_set.masks.max(axis=0))
    placement = dict(rotation_max=rotation_max, scale_min=scale_min, scale_max=scale_max,
                     patch_location=patch_location, patch_scale=patch_scale)
    provenance = dataset.spec.provenance + [{"step": "deploy_patch", **call, **placement,
                                              "patch_set": patch_set.settings.get("model", ""),
                                              "targets": [int(t) for t in patch_set.targets]}]
    distances: Dict[str, List[np.ndarray]] = {}
    start = 0
    with DatasetWriter(output_path, dataset.image_shape, dataset.class_names, columns=PATCH_COLUMNS,
                       provenance=provenance) as writer:
        for batch in dataset.batches(batch_size):
            x, y = batch["x"], batch["y"]
            idx = np.arange(start, start + len(y))
            start += len(y)
            sel = idx[chosen[idx]]
            patched = x[:0]
            if len(sel):
                patched = patches.apply_patches(x[sel - idx[0]], patch_set, which[sel], where.take(sel), batch_size)
                for k, v in distance_stats(to_float(x[sel - idx[0]]), to_float(patched)).items():
                    distances.setdefault(k, []).append(v)
            if patch_deployment_method == "corrupt":
                out = x.copy()
                out[sel - idx[0]] = patched
                writer.write(out, y, **_provenance_columns(idx, chosen[idx], which, where, patch_set))
            else:
                writer.write(x, y, **_provenance_columns(idx, np.zeros(len(idx), bool), which, where, patch_set))
                if len(sel):
                    writer.write(patched, y[sel - idx[0]],
                                 **_provenance_columns(sel, np.ones(len(sel), bool), which, where, patch_set))
    metrics: Dict[str, float] = {"num_patched": float(chosen.sum()), "num_examples": float(writer.spec.num_examples)}
    for k, parts in distances.items():
        metrics.update({f"{k}_{stat}": v for stat, v in summarize(np.concatenate(parts)).items()})
    details: Dict[str, Any] = {**call, **placement}
    with _tracked("deploy_patch", ctx, {**call, **placement}) as run:
        run.log_metrics(metrics)
        if output_tar_name:  # the seed's cross-run reuse: adv_testing.tar / adversarial_patched_data
            run.log_dataset(output_path, output_tar_name, output_dataset_name)
            details.update(mlflow_run_id=run.run_id, dataset_tar_name=output_tar_name,
                           dataset_name=output_dataset_name)
    log.info("deploy_patch: %d of %d images patched (%s), %d written", chosen.sum(), n, patch_deployment_method,
             writer.spec.num_examples)
    return StepResult(
        step="deploy_patch",
        label=f"deploy_patch {patch_deployment_method} ({patch_location}, "
              f"{'scale ' + str(patch_scale) if patch_scale else f'scale {scale_min}-{scale_max}'})",
        metrics=metrics,
        details=details,
    )


def _provenance_columns(idx, patched, which, where, patch_set) -> Dict[str, np.ndarray]:
    nan = np.float32(np.nan)
    return {
        "patched": patched,
        "patch_index": np.where(patched, which[idx], -1).astype(np.int16),
        "patch_target": np.where(patched, patch_set.targets[which[idx]], -1).astype(np.int16),
        "patch_scale": np.where(patched, where.scale[idx], nan),
        "patch_angle": np.where(patched, where.angle[idx], nan),
        "patch_x": np.where(patched, where.x[idx], nan),
        "patch_y": np.where(patched, where.y[idx], nan),
        "source_index": idx.astype(np.int64),
    }


# --------------------------------------------------------------------------- defences
def _input_dataset(data_path: str, load_dataset_from_mlruns: bool, run_id: str, tar_name: str, dataset_name: str,
                   scratch: str) -> str:
    """The path of a step's input dataset: the artifact, or (the seed's ``load_dataset_from_mlruns``)
    a dataset an earlier MLflow run logged."""
    if load_dataset_from_mlruns:
        from advpatch.tracking import fetch_dataset

        return str(fetch_dataset(run_id, tar_name, dataset_name, scratch))
    if not data_path:
        raise params.ParameterError("no input dataset: connect a Dataset artifact or set load_dataset_from_mlruns=True")
    return data_path


@_timed("defence")
def defend(
    defence: str,
    data_path: str,
    output_path: str,
    *,
    settings: Dict[str, Any],
    apply_fit: bool,
    apply_predict: bool,
    data_role: str = "predict",
    batch_size: int = 256,
    seed: int = 0,
    load_dataset_from_mlruns: bool = False,
    dataset_run_id: str = "",
    dataset_tar_name: str = "adv_testing.tar",
    dataset_name: str = "adversarial_patched_data",
    output_tar_name: str = "",
    ctx: RunContext = RunContext(),
) -> StepResult:
    """Apply a preprocessing defence (see :mod:`advpatch.defences`) to a dataset.

    ``settings`` holds the defence's own parameters under the seed's names (for example
    ``spatial_smoothing_window_size``). The output keeps the input's per-image columns (so
    ``infer`` still reports targeted success on defended patched images) and records the
    defence in its provenance; with ``output_tar_name`` it is also logged to MLflow as that tar
    holding a folder named after the defence.
    """
    import tempfile

    from advpatch import defences
    from advpatch.dataset import Dataset, DatasetWriter, to_float, to_uint8

    params.check_choice("defence", defence, defences.DEFENCES)
    params.check(batch_size=batch_size, seed=seed, data_role=data_role,
                 **{k: v for k, v in settings.items() if k in params.RANGES})
    augment = bool(settings.get("gaussian_augmentation_perform_data_augmentation", False))
    if defence == "gaussian_augmentation":
        defences.check_gaussian(augment, apply_fit, apply_predict)
    active = defences.applies(apply_fit, apply_predict, data_role)
    with tempfile.TemporaryDirectory() as scratch:
        source = Dataset(_input_dataset(data_path, load_dataset_from_mlruns, dataset_run_id, dataset_tar_name,
                                        dataset_name, scratch))
        if defence == "spatial_smoothing":
            fn = defences.spatial_smoothing(settings["spatial_smoothing_window_size"], apply_fit, apply_predict)
        elif defence == "jpeg_compression":
            fn = defences.jpeg_compression(settings["jpeg_compression_quality"],
                                           settings.get("jpeg_compression_channels_first", False),
                                           apply_fit, apply_predict)
        else:
            fn = defences.gaussian_noise(settings["gaussian_augmentation_sigma"], apply_fit, apply_predict)
        record = {"step": defence, **settings, "apply_fit": apply_fit, "apply_predict": apply_predict,
                  "data_role": data_role, "applied": active, "seed": seed}
        columns = dict(source.spec.columns)
        if augment:
            columns["augmented"] = "bool"
        rng = np.random.default_rng(seed)
        extra = defences.augmentation_indices(len(source), settings["gaussian_augmentation_ratio"], rng) \
            if (augment and active) else np.zeros(0, np.int64)
        changed, start = 0, 0
        with DatasetWriter(output_path, source.image_shape, source.class_names, columns=columns,
                           provenance=source.spec.provenance + [record]) as writer:
            for i, batch in enumerate(source.batches(batch_size)):
                x, y = batch["x"], batch["y"]
                cols = {k: v for k, v in batch.items() if k not in ("x", "y")}
                n = len(y)
                call = defences.seeded(fn, seed * 100003 + i)
                if augment:
                    writer.write(x, y, **cols, augmented=np.zeros(n, bool))
                    pick = extra[(extra >= start) & (extra < start + n)] - start
                    if len(pick):
                        noisy = to_uint8(call(to_float(x[pick])))
                        writer.write(noisy, y[pick], **{k: v[pick] for k, v in cols.items()},
                                     augmented=np.ones(len(pick), bool))
                        changed += len(pick)
                elif active:
                    out = to_uint8(call(to_float(x)))
                    changed += int((out != x).reshape(n, -1).any(axis=1).sum())
                    writer.write(out, y, **cols)
                else:
                    writer.write(x, y, **cols)
                start += n
        metrics = {"applied": float(active), "num_examples": float(writer.spec.num_examples),
                   "num_changed": float(changed)}
        with _tracked(defence, ctx, {**settings, "apply_fit": apply_fit, "apply_predict": apply_predict,
                                     "data_role": data_role, "seed": seed}) as run:
            run.log_metrics(metrics)
            if output_tar_name:
                run.log_dataset(output_path, output_tar_name, defence)
                metrics_note = {"mlflow_run_id": run.run_id, "dataset_tar_name": output_tar_name,
                                "dataset_name": defence}
    log.info("%s: %s to %s data; %d images changed or added", defence, "applied" if active else "not applied",
             data_role, changed)
    return StepResult(step=defence, label=defence.replace("_", " "), metrics=metrics,
                      details={**record, **(metrics_note if output_tar_name else {})})
