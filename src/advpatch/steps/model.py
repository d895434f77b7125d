"""init_model and import_model: a model that is not trained here (Keras' pretrained ImageNet
weights, or a user's own ``.keras`` file) -> a Model artifact, evaluated on the test data and
logged (and registered) in MLflow, as ``train`` does for the models it trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Union

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, step
from advpatch.steps._params import ImportModelParams, InitModelParams

if TYPE_CHECKING:
    from advpatch.data.dataset import Dataset
    from advpatch.models import ModelInfo


@step("init_model")
def init_model(p: InitModelParams, track: Tracker, *, testing_data: str, model: str) -> StepResult:
    """``p.model_architecture`` (resnet50 or vgg16) with Keras' ImageNet weights from ``p.weights``
    (a local path or ``s3://``; empty: Keras' own download), its preprocessing inside so it takes
    [0, 1] pixels. Its classes are the test data's: load the data with ``class_index`` (Keras'
    ``imagenet_class_index.json``), so the dataset's labels are the model's 1,000 output indices.
    The weights file is checked (name, layers, top) and the data's classes counted before
    TensorFlow is imported. Evaluated on ``testing_data`` as ``infer`` evaluates; logged (and, with
    ``register_model``, registered) as ``{experiment}_{model_tag}_{model_architecture}``."""
    import tempfile
    from pathlib import Path

    from advpatch.data.dataset import Dataset
    from advpatch.models import IMAGENET_SHAPE, ModelError, check_weights

    test_set = Dataset(testing_data)
    if len(test_set.class_names) != 1000:
        raise ModelError(f"{p.model_architecture}'s ImageNet weights have 1,000 classes but the test data has "
                         f"{len(test_set.class_names)}: load it with class_index=imagenet_class_index.json")
    if tuple(test_set.image_shape) != IMAGENET_SHAPE:
        raise ModelError(f"{p.model_architecture} with ImageNet weights takes 224x224x3 images but the test data has "
                         f"{'x'.join(map(str, test_set.image_shape))}: load it with image_size=224, color_mode='rgb'")
    with tempfile.TemporaryDirectory() as tmp:
        weights = ""
        if p.weights:
            from advpatch.data.sources import fetch_file

            weights = str(fetch_file(p.weights, Path(tmp), "weights"))
            check_weights(p.model_architecture, weights)
        log.info("init_model: %s with ImageNet weights %s", p.model_architecture, p.weights or "(Keras download)")
        from advpatch.models import pretrained_model, training

        training.seed_everything(p.seed)
        net, info = pretrained_model(p.model_architecture, weights, test_set.class_names)
    info.provenance.update({"step": "init_model", "weights": p.weights or info.provenance["weights"]})
    return _finish(p, track, net, info, test_set, testing_data, model, "init_model", p.model_architecture)


@step("import_model")
def import_model(p: ImportModelParams, track: Tracker, *, testing_data: str, model: str) -> StepResult:
    """A user's Keras model (``p.model_file``, a ``.keras`` file at a local path or ``s3://``) as a
    Model artifact. Checked before any evaluation: it loads with ``safe_mode=True`` (no Python
    lambdas), takes the test data's images and outputs one probability or logit per class of the
    data (whose classes, in the model's order, come from load_dataset's ``class_index`` or the
    sub-folders). ``preprocessing`` is put in front of it, so it takes [0, 1] pixels as every
    advpatch model does; a model that outputs logits gets a softmax after them (and attacks use the
    logits). Evaluated, logged and registered as ``init_model``'s models are."""
    import tempfile
    from pathlib import Path

    from advpatch.data.dataset import Dataset
    from advpatch.data.sources import fetch_file
    from advpatch.params import ParameterError

    if not p.model_file:
        raise ParameterError("model_file is required: a .keras file, a local path or s3://BUCKET/KEY")
    test_set = Dataset(testing_data)
    with tempfile.TemporaryDirectory() as tmp:
        local = fetch_file(p.model_file, Path(tmp), "model_file")
        from advpatch.models import training, user_model

        training.seed_everything(p.seed)
        net, info = user_model(local, p.preprocessing, test_set.image_shape, test_set.class_names)
    info.provenance.update({"step": "import_model", "model_file": p.model_file})
    log.info("import_model: %s (%s, preprocessing %s)", p.model_file, info.provenance["outputs"], p.preprocessing)
    return _finish(p, track, net, info, test_set, testing_data, model, "import_model", info.architecture)


def _finish(p: Union[InitModelParams, ImportModelParams], track: Tracker, net: Any, info: ModelInfo, test_set: Dataset,
            testing_data: str, model: str, step_name: str, architecture: str) -> StepResult:
    """Evaluate on the test data, log and register in MLflow, write the Model artifact."""
    from advpatch.evaluation import predict
    from advpatch.models import save_model
    from advpatch.models.classifier import Classifier
    from advpatch.steps._evaluations import evaluate, log_evaluations

    row = p.row or p.model_tag or architecture
    out = predict(Classifier(net, info), test_set, p.batch_size)
    evaluations = evaluate(row, "auto", out, info.class_names, test_set)
    details: Dict[str, Any] = {"model_architecture": architecture, "preprocessing": info.preprocessing,
                               "dataset": test_set.summary()}
    with track.run(f"{step_name}: {p.model_tag or architecture}") as run:
        name = ""
        if p.register_model:
            from advpatch.tracking.registry import registered_model_name

            name = registered_model_name(track.ctx.experiment, p.model_tag, architecture)
        uri, version = run.log_model(net, info.to_json(), registered_name=name)
        info.provenance["mlflow_model_uri"] = uri
        details.update({"mlflow_run_id": run.run_id, "model_uri": uri, "registered_model": name,
                        "registered_version": version})
    log_evaluations(track, evaluations, "evaluate", testing_data, part=True)
    save_model(net, info, model)
    log.info("%s: model written to %s%s", step_name, model, f", registered as {name} v{version}" if version else "")
    e = evaluations[0]
    label = f"{step_name} {architecture}" + (f" '{p.model_tag}'" if p.model_tag else "")
    return StepResult(step=step_name, label=label,
                      metrics={f"test_{k}": v for k, v in e.metrics.items()},
                      counts={f"test_{k}": v for k, v in e.counts.items()}, details=details, evaluations=evaluations,
                      outputs={"model": {"architecture": architecture, "mlflow_model_uri": uri,
                                         "preprocessing": info.preprocessing}})
