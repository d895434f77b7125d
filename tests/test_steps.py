"""The steps behind the components, against a real local MLflow tracking store."""

import csv
import json
import os

import numpy as np
import pytest

from advpatch import steps
from advpatch.data.dataset import DatasetError
from advpatch.models import ModelError
from advpatch.params import ParameterError
from advpatch.tracking import RunContext
from advpatch.tracking.registry import RegistryError, registered_model_name


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:  # the steps' MLflow runs go to this module's own store
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        steps.load_dataset(dataset=str(root / "train"), source="digits", split="train", max_examples=200, seed=0)
        steps.load_dataset(dataset=str(root / "test"), source="digits", split="test", max_examples=60, seed=0)
    return root


def test_registered_model_name_pattern():
    assert registered_model_name("mnist", "baseline", "le_net") == "mnist_baseline_le_net"
    assert registered_model_name("mnist", "", "le_net") == "mnist_le_net"


def test_a_step_signature_is_its_artifacts_then_the_table():
    import inspect

    from advpatch import params

    names = list(inspect.signature(steps.train).parameters)
    assert names == ["training_data", "model", "testing_data", *[p.name for p in params.STEP_PARAMS["train"]], "ctx"]
    assert inspect.signature(steps.infer).parameters["batch_size"].default == 256
    with pytest.raises(TypeError, match=r"train\(\) needs the artifact path\(s\) model"):
        steps.train(training_data="x")


def test_a_sqlite_store_keeps_artifacts_beside_its_database(tmp_path, monkeypatch):
    import mlflow

    from advpatch.tracking.runs import _experiment_id, configure

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    configure()
    experiment = mlflow.get_experiment(_experiment_id("beside"))
    assert experiment.artifact_location == (tmp_path / "store" / "artifacts").as_uri()
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        mlflow.log_text("x", "x.txt")
    assert not (tmp_path / "mlruns").exists()
    assert len(list((tmp_path / "store" / "artifacts").rglob("x.txt"))) == 1


def test_train_registers_under_the_seed_pattern_and_infer_loads_it(tiny_data, tmp_path, outputs):
    import mlflow

    data = dict(training_data=str(tiny_data / "train"))
    ctx = RunContext(experiment_name="exp", pipeline_run_id="run-123", pipeline_run_name="my-run", task_name="train")
    tagged = steps.train(**data, model=str(tmp_path / "m1"), testing_data=str(tiny_data / "test"), epochs=1,
                         model_tag="baseline", register_model=True, seed=0, ctx=ctx)
    plain = steps.train(**data, model=str(tmp_path / "m2"), epochs=1, register_model=True, seed=0,
                        ctx=RunContext(experiment_name="exp"))
    unregistered = steps.train(**data, model=str(tmp_path / "m3"), epochs=0.5, seed=0,
                               ctx=RunContext(experiment_name="exp"))
    assert tagged.details["model_uri"] == "models:/exp_baseline_le_net/1"
    assert plain.details["model_uri"] == "models:/exp_le_net/1"
    assert unregistered.details["registered_version"] == ""
    assert "test_accuracy" in tagged.metrics and "test_accuracy" not in plain.metrics

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    names = sorted(m.name for m in client.search_registered_models())
    assert names == ["exp_baseline_le_net", "exp_le_net"]
    run = client.get_run(tagged.details["mlflow_run_id"])
    assert run.data.params["model_architecture"] == "le_net" and run.data.params["model_tag"] == "baseline"
    assert run.data.metrics["test_accuracy"] == pytest.approx(tagged.metrics["test_accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1

    # infer by registered name (loaded with safe_mode from the downloaded .keras file), nested under the same run
    ctx2 = RunContext(experiment_name="exp", pipeline_run_id="run-123", pipeline_run_name="my-run", task_name="infer")
    by_uri = steps.infer(data=str(tiny_data / "test"), predictions=str(tmp_path / "p.csv"),
                         model_uri="models:/exp_baseline_le_net/1", model_architecture="le_net", ctx=ctx2)
    by_path = steps.infer(data=str(tiny_data / "test"), predictions=str(tmp_path / "q.csv"), model=str(tmp_path / "m1"))
    assert by_uri.metrics["accuracy"] == pytest.approx(tagged.metrics["test_accuracy"])
    assert by_path.metrics == pytest.approx(by_uri.metrics)
    exp = client.get_experiment_by_name("exp")
    parents = client.search_runs([exp.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.run_name == "my-run"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(r.data.tags["kfp.task_name"] for r in children) == ["infer", "train"]
    with pytest.raises(RegistryError, match="cannot find the model models:/exp_nothing_le_net/1"):
        steps.infer(data=str(tiny_data / "test"), predictions=str(tmp_path / "r.csv"),
                    model_uri="models:/exp_nothing_le_net/1")


def test_infer_writes_metrics_confusion_and_predictions(tiny_data, tmp_path, outputs):
    steps.train(training_data=str(tiny_data / "train"), model=str(tmp_path / "m"), epochs=2, seed=1)
    result = steps.infer(data=str(tiny_data / "test"), predictions=str(tmp_path / "pred.csv"),
                         model=str(tmp_path / "m"), row="mine")
    (evaluation,) = result.evaluations
    matrix = np.array(evaluation.matrix)
    assert matrix.shape == (10, 10) and matrix.sum() == 60
    assert evaluation.counts["accuracy"] == [int(np.trace(matrix)), 60]
    assert result.metrics["accuracy"] == pytest.approx(np.trace(matrix) / 60)
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60
    assert np.mean([r["label"] == r["predicted"] for r in rows]) == pytest.approx(result.metrics["accuracy"])
    assert (evaluation.row, evaluation.condition) == ("mine", "clean")  # condition 'auto': no patched images
    assert evaluation.label == "mine / clean"
    assert json.loads(result.to_json())["evaluations"][0]["row"] == "mine"
    with pytest.raises(ParameterError, match="condition='split' needs data with patched images"):
        steps.infer(data=str(tiny_data / "test"), predictions=str(tmp_path / "p2.csv"), model=str(tmp_path / "m"),
                    condition="split")
    assert not (tmp_path / "p2.csv").exists()


def test_train_rejects_bad_input_before_work_and_writes_nothing(tiny_data, tmp_path, outputs):
    out = tmp_path / "model"
    data = str(tiny_data / "train")
    with pytest.raises(ModelError, match="'vgg16' needs images of at least 32x32"):
        steps.train(training_data=data, model=str(out), model_architecture="vgg16")
    with pytest.raises(ParameterError, match="optimizer must be one of"):
        steps.train(training_data=data, model=str(out), optimizer="nadam")
    with pytest.raises(ParameterError, match="epochs must be a number > 0, got -1"):
        steps.train(training_data=data, model=str(out), epochs=-1)
    with pytest.raises(ParameterError, match=r"^learning_rat is not a parameter of train; it takes "):
        steps.train(training_data=data, model=str(out), learning_rat=0.1)
    with pytest.raises(DatasetError, match=r"dataset\.json is missing"):
        steps.train(training_data=str(tmp_path), model=str(out))
    assert not out.exists() and not (outputs / "mlflow").exists()


def test_infer_rejects_mismatched_model_and_data(tiny_data, tmp_path, outputs):
    steps.load_dataset(dataset=str(tmp_path / "big"), source="digits", split="test", image_size=32, max_examples=10)
    steps.train(training_data=str(tiny_data / "train"), model=str(tmp_path / "m"), epochs=0.2)
    infer = dict(predictions=str(tmp_path / "p.csv"))
    with pytest.raises(ModelError, match="the model takes 28x28x1 images but the dataset has 32x32x1"):
        steps.infer(data=str(tmp_path / "big"), model=str(tmp_path / "m"), **infer)
    with pytest.raises(ModelError, match="model_architecture is 'alex_net' but the model is a 'le_net'"):
        steps.infer(data=str(tiny_data / "test"), model=str(tmp_path / "m"), model_architecture="alex_net", **infer)
    with pytest.raises(ParameterError, match="exactly one model"):
        steps.infer(data=str(tiny_data / "test"), **infer)
    with pytest.raises(ParameterError, match="model_uri must be 'models:/NAME/VERSION' or 'runs:/RUN_ID/PATH'"):
        steps.infer(data=str(tiny_data / "test"), model_uri="mnist_le_net", **infer)
    assert not (tmp_path / "p.csv").exists()


def test_a_training_set_larger_than_memory_streams_from_its_shards(tmp_path, outputs, monkeypatch):
    """With a memory budget below the set's size, train never loads the set: it streams shard groups
    through tf.data (plain and PGD training, with a validation split), learns as well, and the same
    seed gives the same weights."""
    from advpatch.data.dataset import Dataset
    from advpatch.models import load_model, training

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=600, seed=0)
    steps.load_dataset(dataset=str(tmp_path / "test"), source="digits", split="test", max_examples=200, seed=0)
    from advpatch.data.sources import import_dataset

    import_dataset(str(tmp_path / "train"), tmp_path / "sharded", shard_bytes=28 * 28 * 50)  # 12 shards of 50
    assert len(Dataset(tmp_path / "sharded").spec.shards) == 12
    monkeypatch.setattr(training, "MEMORY_BUDGET", 28 * 28 * 200)  # a third of the set; 2 shards a group

    def refuse(self):
        raise AssertionError("the training set was loaded whole")

    monkeypatch.setattr(Dataset, "load", refuse)
    fit = dict(training_data=str(tmp_path / "sharded"), model_architecture="le_net", epochs=6, learning_rate=0.003,
               validation_split=0.1, seed=3)
    streamed = steps.train(model=str(tmp_path / "m1"), **fit)
    again = steps.train(model=str(tmp_path / "m2"), **fit)
    assert streamed.metrics == again.metrics and streamed.metrics["final_val_accuracy"] > 0.8
    for a, b in zip(load_model(tmp_path / "m1")[0].get_weights(), load_model(tmp_path / "m2")[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    pgd = steps.train(model=str(tmp_path / "m3"), apply_defense=True, pgd_max_iter=2,
                      **{**fit, "epochs": 2, "validation_split": 0.0}, testing_data=str(tmp_path / "test"))
    assert pgd.metrics["final_accuracy"] > 0.5 and pgd.counts["test_pgd_accuracy"][1] == 200


def test_gen_patch_reads_only_the_images_it_draws(tiny_data, tmp_path, outputs, monkeypatch):
    from advpatch.data.dataset import Dataset

    steps.train(training_data=str(tiny_data / "train"), model=str(tmp_path / "model"), epochs=1)
    read = []
    take = Dataset.take
    monkeypatch.setattr(Dataset, "load", lambda self: (_ for _ in ()).throw(AssertionError("loaded whole")))
    monkeypatch.setattr(Dataset, "take", lambda self, idx: read.append(len(idx)) or take(self, idx))
    result = steps.gen_patch(data=str(tiny_data / "train"), model=str(tmp_path / "model"), patches=str(tmp_path / "p"),
                             max_iter=2, num_patch=2, num_patch_gen_samples=12, patch_target_name="7")
    assert read == [12, 12] and result.details["targets"] == ["7", "7"]


def test_deploy_patch_loads_its_compiled_loops_on_a_thread_while_it_opens_its_data(tiny_data, tmp_path, outputs,
                                                                                 monkeypatch):
    """Numba's first load (0.4-0.6 s) overlaps the step's start: paste.warm runs on the step's
    loading thread, and the step's result is what it is without it."""
    import threading

    from advpatch import patches
    from advpatch.data.dataset import Dataset
    from advpatch.patches import paste

    data = Dataset(str(tiny_data / "test"))
    patch = np.random.default_rng(0).random((1, 28, 28, data.image_shape[-1]), dtype=np.float32)
    patches.PatchSet(patch, patches.make_mask(28, "circle")[None], np.array([3], np.int32), data.class_names,
                     data.image_shape).save(str(tmp_path / "ps"))
    kw = {"data": str(tiny_data / "test"), "patches": str(tmp_path / "ps"), "patch_scale": 0.4, "seed": 3}
    seen, real = [], paste.warm
    monkeypatch.setattr(paste, "warm", lambda: seen.append(threading.current_thread().name) or real())
    loaded = steps.deploy_patch(**kw, patched_data=str(tmp_path / "a"))
    assert seen == ["advpatch-load"] and loaded.metrics["num_patched"] == 60
    monkeypatch.setenv("ADVPATCH_NUMPY_PASTE", "1")  # no loading thread, NumPy's passes: the same bytes
    plain = steps.deploy_patch(**kw, patched_data=str(tmp_path / "b"))
    assert seen == ["advpatch-load"] and plain.metrics == {k: v for k, v in loaded.metrics.items()}
    assert Dataset(str(tmp_path / "a")).spec.shards == Dataset(str(tmp_path / "b")).spec.shards


def test_a_step_runs_with_the_heap_before_it_left_out_of_the_cycle_collector(tmp_path, outputs, monkeypatch):
    """The objects alive when a step starts are frozen (``gc.freeze``) while it runs and handed back
    after, also when it fails; inside a freeze made elsewhere a step changes nothing."""
    import gc

    from advpatch.data import sources
    from advpatch.steps._base import long_lived_frozen

    seen = []
    real = sources.embedded_digits

    def spy(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "embedded_digits", spy)
    assert gc.get_freeze_count() == 0
    steps.load_dataset(dataset=str(tmp_path / "d"), source="digits", split="test", max_examples=10)
    assert seen and seen[0] > 0 and gc.get_freeze_count() == 0
    with pytest.raises(ParameterError):
        steps.load_dataset(dataset=str(tmp_path / "e"), source="digits", split="test", max_examples=-1)
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with long_lived_frozen():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
