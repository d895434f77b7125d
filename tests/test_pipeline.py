"""Pipelines: compiled specs, and whole runs through kfp.local."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from advpatch import params, settings
from advpatch.params import PREPROCESSING_DEFENCES as DEFENCES


@pytest.mark.parametrize("name", ["mnist-patch", "mnist-experiment", "mnist-sweep", "mnist-defences",
                                  "fruits360-experiment", "imagenet-patch", "custom-model-patch"])
def test_compiling_does_not_import_tensorflow(tmp_path, name):
    code = (
        "import sys; from kfp import compiler; from advpatch.pipelines import PIPELINES;"
        f"compiler.Compiler().compile(PIPELINES[{name!r}], {str(tmp_path / 'p.yaml')!r});"
        "assert 'tensorflow' not in sys.modules and 'mlflow' not in sys.modules, 'heavy import at compile time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == f"advpatch-{name}"
    assert platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]  # the run identity's field paths
    executors = spec["deploymentSpec"]["executors"]
    assert executors and all(e["container"]["image"] == settings.runtime_image() for e in executors.values())
    # components are lightweight and never pip-install kfp at run time
    for e in executors.values():
        assert "pip install" not in " ".join(e["container"]["command"])
    assert set(spec["root"]["dag"]["tasks"]) == {"exit-handler-1", "close-run"}
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]  # every step runs inside the exit handler
    if name == "mnist-patch":
        assert set(tasks) == {"load-dataset", "load-dataset-2", "train", "gen-patch", "deploy-patch", "infer",
                              "infer-2", "report"}
    elif name == "mnist-sweep":  # a ParallelFor over the scales, its results gathered for the report
        (loop,) = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-for-loop")]
        assert loop["parameterIterator"]["items"]["inputParameter"].endswith("patch_scales")
        body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
        assert sorted(re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in body.values()) == [
            "comp-deploy-patch", "comp-infer", "comp-infer", "comp-jpeg-compression"]
        gathers = [k for k, t in tasks.items() if t["componentRef"]["name"].startswith("comp-gather")]
        assert len(gathers) == 2 and set(tasks["report"]["dependentTasks"]) >= set(gathers)
    elif name == "mnist-defences":  # the experiment's rows, and an adaptive attack on each defence
        kinds = [re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in tasks.values()]
        n = len(DEFENCES)  # every preprocessing defence advpatch has, found without a list
        # infer: the baseline, each defence transferred, adaptive and at worst-case placement, the baseline's
        # worst case, the two trained models adaptive and at worst case
        assert kinds.count("comp-gen-patch") == 1 + n + 2 and kinds.count("comp-infer") == 2 + 3 * n + 4
        assert kinds.count("comp-train") == 3 and all(kinds.count(f"comp-{d.replace('_', '-')}") == 3 for d in DEFENCES)
        assert kinds.count("comp-derandomized-smoothing") == 1 and kinds.count("comp-patch-cleanser") == 2
        assert kinds.count("comp-deploy-patch") == 2 + 2 * (n + 2) + 1
        worst = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-deploy-patch")
                 and "patch_placement" in t["inputs"].get("parameters", {})]
        assert len(worst) == 1 + n + 2 and all(
            t["inputs"]["parameters"]["patch_placement"]["runtimeValue"]["constant"] == "worst_case"
            and "model" in t["inputs"]["artifacts"] for t in worst)
        # more steps than the report's slots: collect tasks, a slot's worth each, then the report
        summaries = 1 + (1 + n + 2) + 2 + (2 + 3 * n) + (6 + 3)  # baseline, attacks, deployments, rows
        collects = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-collect")]
        report_slots = [k for k in tasks["report"]["inputs"]["artifacts"] if k.startswith("summary_")]
        slots_per_task = len([i for i in spec["components"]["comp-report"]["inputDefinitions"]["artifacts"]
                              if i.startswith("summary_")])
        assert summaries > slots_per_task and len(collects) == -(-summaries // slots_per_task)
        assert len(report_slots) == len(collects)
        assert sum(len(t["inputs"]["artifacts"]) for t in collects) == summaries
        cleansers = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-patch-cleanser")]
        assert sorted("masked_training_epochs" in t["inputs"]["parameters"]
                      for t in cleansers) == [False, True]  # one without masked training, one with the pipeline's
        defended = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-gen-patch")
                    and "defence" in t["inputs"].get("parameters", {})]
        assert sorted(t["inputs"]["parameters"]["defence"]["runtimeValue"]["constant"] for t in defended) == sorted(
            DEFENCES)
    elif name in ("imagenet-patch", "custom-model-patch"):  # a model made elsewhere, evaluated, attacked
        kinds = sorted(re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in tasks.values())
        model = "comp-init-model" if name == "imagenet-patch" else "comp-import-model"
        assert kinds.count(model) == 1 and "comp-train" not in kinds and kinds.count("comp-infer") == 1 + len(DEFENCES)
        assert tasks["load-dataset"]["inputs"]["parameters"]["class_index"]
    else:
        kinds = [re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in tasks.values()]
        # one infer per comparison row (clean and patched halves of one test set), the two
        # hardened models evaluated by their own training step
        assert kinds.count("comp-infer") == 1 + len(DEFENCES) and kinds.count("comp-train") == 3
        assert all(kinds.count(f"comp-{d.replace('_', '-')}") == 1 for d in DEFENCES)
        assert kinds.count("comp-deploy-patch") == 2
        assert len([k for k in tasks["report"]["inputs"]["artifacts"] if k.startswith("summary_")]) == 7 + len(DEFENCES)
    # the run is not an input (KFP's cache would never hit): tasks read it from their environment
    assert set(tasks["gen-patch"]["inputs"]["parameters"]) >= {"experiment_name", "task_name"}
    assert "pipeline_run_id" not in json.dumps(spec) and "pipeline_job_uuid" not in json.dumps(spec)
    assert spec["root"]["dag"]["tasks"]["close-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_runtime_image_follows_the_package_version(monkeypatch):
    from advpatch import __version__

    monkeypatch.delenv(settings.ENV_IMAGE, raising=False)
    monkeypatch.delenv(settings.ENV_IMAGE_TAG, raising=False)
    monkeypatch.setenv(settings.ENV_IMAGE_REGISTRY, "registry.example:5000/ml/")
    assert settings.runtime_image() == f"registry.example:5000/ml/advpatch:{__version__}"
    monkeypatch.setenv(settings.ENV_IMAGE, "mine:dev")
    assert settings.runtime_image() == "mine:dev"


SHORT = {"max_iter": 300}
"""The short pipeline's arguments in these tests, besides data_dir (the defaults otherwise)."""


@pytest.fixture(scope="module")
def short_run(mnist_folder, tmp_path_factory):
    """`advpatch run mnist-patch` in a fresh folder with its own MLflow store; what it printed."""
    import contextlib
    import io

    from advpatch.app import cli

    root = tmp_path_factory.mktemp("short-cli")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.delenv(settings.ENV_TRACKING_URI, raising=False)
        mp.delenv(settings.ENV_OUTPUT_DIR, raising=False)
        mp.chdir(root)
        pairs = [f"data_dir={mnist_folder}", *[f"{k}={v}" for k, v in SHORT.items()]]
        assert cli.main(["run", "mnist-patch", *[a for pair in pairs for a in ("-p", pair)]]) == 0
    (root / "printed.txt").write_text(printed.getvalue())
    return root


@pytest.fixture(scope="module")
def compiled_run(mnist_folder, tmp_path_factory):
    """The same pipeline and arguments, compiled for a cluster (GPU placement, secrets, ConfigMap)
    and run back through kfp.local from the YAML, in another fresh folder and MLflow store."""
    from kfp import components, local

    from advpatch.app import cli

    root = tmp_path_factory.mktemp("short-compiled")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.ENV_OUTPUT_DIR, str(root / "outputs"))
        mp.setenv(settings.ENV_TRACKING_URI, f"sqlite:///{root / 'outputs' / 'mlflow' / 'mlflow.db'}")
        assert cli.main(["compile", "mnist-patch", "--output", str(root / "mnist-patch.yaml"),
                         "--image", "registry.example.com/ml/advpatch:9.9.9"]) == 0
        pipeline = components.load_component_from_file(str(root / "mnist-patch.yaml"))
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "outputs" / "run" / "kfp"))
        pipeline(data_dir=str(mnist_folder), **SHORT)
    (run,) = (root / "outputs" / "run" / "kfp").iterdir()
    (root / "outputs" / "run").mkdir(parents=True, exist_ok=True)
    (root / "outputs" / "run" / "results.json").write_text((run / "report" / "results").read_text())
    return root


@pytest.mark.pipeline
def test_mnist_patch_pipeline_end_to_end(short_run):
    """The short pipeline through kfp.local: results.json, its comparison row and the MLflow runs behind it."""
    root = short_run
    printed = (root / "printed.txt").read_text()
    assert "| baseline | " in printed.replace("  ", " ") and "targeted success" in printed
    # advpatch run's warm process ran the steps of the tasks that started once it was ready (the
    # same-seed test below checks that this changes no byte against a plain kfp.local run)
    assert printed.count("runs in a warm child") >= 4, printed
    results = json.loads((root / "outputs" / "run" / "results.json").read_text())
    assert results["format"] == "advpatch-results"
    steps = {s["step"]: s for s in results["steps"]}
    assert [s["step"] for s in results["steps"]] == ["train", "gen_patch", "deploy_patch", "infer", "infer"]
    assert steps["train"]["details"]["model_uri"] == "models:/mnist_le_net/1"
    clean, patched = results["evaluations"]
    assert (clean["row"], clean["condition"], clean["label"]) == ("baseline", "clean", "baseline / clean")
    assert clean["num_examples"] == 80 and clean["accuracy"] > 0.6  # 300 training images, 15 epochs
    assert "targeted_success_rate" not in clean
    # the defaults: 3 patches, target 5, centre, scale 0.4, every test image corrupted
    assert steps["gen_patch"]["details"]["targets"] == ["5", "5", "5"]
    assert steps["deploy_patch"]["metrics"]["num_patched"] == 80
    assert (patched["row"], patched["condition"]) == ("baseline", "patched") and patched["num_patched"] == 80
    assert patched["accuracy"] < clean["accuracy"] - 0.3
    assert patched["targeted_success_rate"] > 0.5
    (row,) = results["comparison"]
    assert (row["label"], row["clean_accuracy"], row["patched_accuracy"], row["targeted_success_rate"]) == (
        "baseline", clean["accuracy"], patched["accuracy_patched"], patched["targeted_success_rate"])
    assert row["rates"]["clean_accuracy"]["count"] == 80 and row["rates"]["patched_accuracy"]["count"] == 80
    assert clean["confusion_matrix"]["categories"] == [str(i) for i in range(10)]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'outputs' / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("mnist")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["kfp.task_name"] for c in children) == [
        "deploy-patch", "gen-patch", "infer", "infer-2", "load-dataset", "load-dataset-2", "train"]
    logged = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/results.json")
    assert logged["evaluations"] == results["evaluations"]
    # MLflow that reads well: the experiment opens on its training runs, runs are named after what
    # they are, the parent holds each row's figures, the inputs fill MLflow's Dataset column
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    names = {c.data.tags["kfp.task_name"]: c.info.run_name for c in children}
    assert names["infer"] == "infer: baseline / clean" and names["infer-2"] == "infer: baseline / patched"
    assert names["gen-patch"] == "gen_patch: 3 patches" and names["train"] == "train: le_net"
    assert names["load-dataset"] == "load_dataset: train" and names["deploy-patch"] == "deploy_patch: corrupt"
    assert parent.data.metrics["targeted_success_rate/baseline"] == patched["targeted_success_rate"]
    assert parent.data.metrics["clean_accuracy/baseline"] == clean["accuracy"]
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    by_task = {c.data.tags["kfp.task_name"]: c for c in children}
    (used,) = by_task["infer-2"].inputs.dataset_inputs
    assert used.dataset.digest and used.dataset.source_type == "local" and used.dataset.name
    assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "evaluation"
    assert by_task["train"].inputs.dataset_inputs  # what it was trained on


def _artifacts(root, output="run"):
    """Every file the local runner's tasks wrote, by task/output/path (the run's folder left out)."""
    (run,) = (root / "outputs" / output / "kfp").iterdir()
    return {p.relative_to(run).as_posix(): p for p in sorted(run.rglob("*")) if p.is_file()}


RUN_IDENTITY = ("created", "mlflow_run_id", "mlflow_source", "wall_time_s", "seconds", "uri")
"""Fields that name the MLflow run, the KFP run's folder, the time or a duration: they differ
between two runs by design."""


def _masked(data):
    if isinstance(data, dict):
        return {k: _masked(v) for k, v in data.items() if k not in RUN_IDENTITY}
    if isinstance(data, list):
        return [_masked(v) for v in data]
    return data


@pytest.mark.pipeline
def test_a_failed_local_run_leaves_its_mlflow_run_failed(tmp_path):
    """A step fails; the exit task still runs and marks the pipeline's MLflow run FAILED, not RUNNING.
    The command's last line is the task's own error (its traceback stays in pipeline.log)."""
    import os
    import subprocess
    import sys

    import mlflow

    env = {k: v for k, v in os.environ.items() if k not in (settings.ENV_TRACKING_URI, settings.ENV_OUTPUT_DIR)}
    # a source the command line cannot check before the run (a local one would fail before any task)
    proc = subprocess.run([sys.executable, "-m", "advpatch.app.cli", "run", "mnist-patch", "-p",
                           "data_dir=mlflow-run://0123456789abcdef/data.tar"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "finished with status FAILURE" in err[-2], proc.stderr[-3000:]
    assert err[-1].startswith("advpatch: error: load_dataset: ") and "0123456789abcdef" in err[-1]  # last: why
    assert "Traceback" in (tmp_path / "outputs" / "run" / "pipeline.log").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("mnist")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
    assert parent.info.status == "FAILED" and parent.info.end_time


@pytest.mark.pipeline
def test_same_seed_same_bytes_for_every_artifact_of_the_short_pipeline(short_run, compiled_run):
    """Run twice (from the CLI, and from the YAML compiled for a cluster): every artifact the same."""
    import keras

    results = [json.loads((r / "outputs" / "run" / "results.json").read_text()) for r in (short_run, compiled_run)]
    assert _masked(results[0]) == _masked(results[1])
    first, second = (_artifacts(r) for r in (short_run, compiled_run))
    assert list(first) == list(second) and len(first) > 20
    kinds = set()
    for name, a in first.items():
        b = second[name]
        if name.endswith(".keras"):  # Keras stamps the save time inside the archive: compare what it holds
            ma, mb = keras.saving.load_model(a, safe_mode=True), keras.saving.load_model(b, safe_mode=True)
            assert ma.get_config() == mb.get_config()
            assert all(np.array_equal(u, v) for u, v in zip(ma.get_weights(), mb.get_weights())), name
            kinds.add("model")
        elif a.name in ("summary", "results", "executor_output.json"):
            assert _masked(json.loads(a.read_text())) == _masked(json.loads(b.read_text())), name
            kinds.add("summary")
        elif a.name == "html":  # the report page: all but its header line (when, which run)
            header = re.compile(r"<div class=meta>[^<]*</div>")
            assert header.sub("", a.read_text()) == header.sub("", b.read_text()), name
            kinds.add("html")
        else:
            assert a.read_bytes() == b.read_bytes(), name
            kinds.add(a.suffix or a.name)
    # shards, manifests, patch previews, the predictions CSV and the report's table among them
    assert {"model", "summary", ".npz", ".json", ".png", "predictions", "table", "html"} <= kinds, kinds


def test_bad_pipeline_parameter_fails_fast_with_a_clear_message(capsys, tmp_path, monkeypatch):
    from advpatch.app import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "mnist-experiment", "-p", "model_architecture=lenet5"]) == 2
    assert "model_architecture must be one of 'le_net'" in capsys.readouterr().err
    assert cli.main(["run", "mnist-patch", "-p", "epochs=many"]) == 2
    assert "epochs must be a number, got 'many'" in capsys.readouterr().err
    assert cli.main(["run", "mnist-patch", "-p", "colour=red"]) == 2
    assert "colour is not a parameter of mnist-patch" in capsys.readouterr().err
    # parameters whose names differ from the step's, and rules between parameters, are checked up front too
    assert cli.main(["run", "mnist-patch", "-p", "patch_learning_rate=-1"]) == 2
    assert "patch_learning_rate must be a number > 0, got -1.0" in capsys.readouterr().err
    assert cli.main(["run", "mnist-experiment", "-p", "scale_min=0.6"]) == 2
    assert "scale_min must be smaller than scale_max, got scale_min=0.6 and scale_max=0.5" in capsys.readouterr().err
    assert cli.main(["run", "mnist-patch", "-p", "model_uri=x"]) == 2
    assert not (tmp_path / "outputs").exists()


@pytest.mark.pipeline
def test_the_sweep_pipeline_runs_locally_and_draws_its_curve(mnist_folder, tmp_path, monkeypatch, capsys):
    """mnist-sweep through the local runner: a ParallelFor over scales, gathered into one table and
    one curve per row (the baseline and JPEG compression), with intervals."""
    from advpatch.app import cli

    monkeypatch.delenv(settings.ENV_TRACKING_URI, raising=False)
    monkeypatch.delenv(settings.ENV_OUTPUT_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    args = {"data_dir": mnist_folder, "epochs": 5, "max_iter": 100, "num_patch": 1, "patch_scales": "0.2,0.5"}
    assert cli.main(["run", "mnist-sweep", *[a for k, v in args.items() for a in ("-p", f"{k}={v}")]]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "outputs" / "run" / "results.json").read_text())
    assert [r["label"] for r in results["comparison"]] == [
        "baseline (scale 0.2)", "baseline (scale 0.5)", "JPEG compression (scale 0.2)", "JPEG compression (scale 0.5)"]
    sweep = results["sweep"]
    assert sweep["parameter"] == "patch_scale" and set(sweep["curves"]) == {"baseline", "JPEG compression"}
    for row, points in sweep["curves"].items():
        assert [p["x"] for p in points] == [0.2, 0.5], row
        assert all(p["rates"]["targeted_success_rate"]["count"] > 0 for p in points)
    small, large = sweep["curves"]["baseline"]
    # a bigger patch: at least as much targeted success (80 test images; the gap is large)
    assert large["rates"]["targeted_success_rate"]["value"] >= small["rates"]["targeted_success_rate"]["value"]
    page = (tmp_path / "outputs" / "run" / "report.html").read_text()
    assert "Sweep over patch scale" in page and page.count("data:image/png;base64,") > 10
    assert "| baseline (scale 0.5)" in printed


def test_a_patch_target_the_data_lacks_fails_before_any_task(tmp_path, monkeypatch, capsys):
    """A class folder with 3 classes and the default target 5: refused in milliseconds, naming the
    folder's classes (it used to train for minutes, then fail in gen_patch); the demo picks the
    folder's last class instead, unless the user chose a target."""
    from conftest import digits, small_split, write_png_folder

    from advpatch.app import cli
    from advpatch.data.sources import class_names

    x, y, _ = digits("train")
    keep = y < 3
    for split in ("training", "testing"):
        write_png_folder(tmp_path / "three" / split, *small_split(x[keep], y[keep], 4))
    folder = str(tmp_path / "three")
    assert class_names(folder, "train") == ["0", "1", "2"] and class_names("digits") == [str(i) for i in range(10)]
    assert class_names("s3://bucket/data") is None and class_names(str(tmp_path / "missing")) is None
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "mnist-patch", "-p", f"data_dir={folder}"]) == 2
    err = capsys.readouterr().err
    assert "patch_target must be -1 (random) or a class index in [0, 2], got 5" in err and "3 classes: 0, 1, 2" in err
    assert not (tmp_path / "outputs").exists()  # nothing ran, nothing written
    assert cli.fit_to_data("mnist-experiment", {"data_dir": folder}, choose_target=True) == {
        "data_dir": folder, "patch_target": 2}
    assert "the patch target is its last, 2" in capsys.readouterr().out
    with pytest.raises(params.ParameterError, match=r"class index in \[0, 2\], got 4"):
        cli.fit_to_data("mnist-experiment", {"data_dir": folder, "patch_target": 4}, choose_target=True)
    assert cli.fit_to_data("mnist-patch", {"data_dir": folder, "patch_target": -1}) == {
        "data_dir": folder, "patch_target": -1}
