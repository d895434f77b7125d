"""Pipelines: compiled specs, and whole runs through kfp.local."""

import json
import subprocess
import sys

import pytest
import yaml

from advpatch import settings


@pytest.mark.parametrize("name", ["mnist-patch", "mnist-experiment"])
def test_compiling_does_not_import_tensorflow(tmp_path, name):
    code = (
        "import sys; from kfp import compiler; from advpatch.pipelines import PIPELINES;"
        f"compiler.Compiler().compile(PIPELINES[{name!r}], {str(tmp_path / 'p.yaml')!r});"
        "assert 'tensorflow' not in sys.modules and 'mlflow' not in sys.modules, 'heavy import at compile time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == f"advpatch-{name}"
    executors = spec["deploymentSpec"]["executors"]
    assert executors and all(e["container"]["image"] == settings.runtime_image() for e in executors.values())
    # components are lightweight and never pip-install kfp at run time
    for e in executors.values():
        assert "pip install" not in " ".join(e["container"]["command"])
    tasks = spec["root"]["dag"]["tasks"]
    if name == "mnist-patch":
        assert set(tasks) == {"load-dataset", "load-dataset-2", "train", "gen-patch", "deploy-patch", "infer",
                              "infer-2", "report"}
    else:
        import re

        kinds = [re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in tasks.values()]
        assert kinds.count("comp-infer") == 12 and kinds.count("comp-train") == 3
        assert kinds.count("comp-spatial-smoothing") == kinds.count("comp-jpeg-compression") == 2
        assert kinds.count("comp-gaussian-augmentation") == 2
        assert len([k for k in tasks["report"]["inputs"]["artifacts"] if k.startswith("step_")]) == 18
    assert tasks["train"]["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert spec["root"]["outputDefinitions"]["artifacts"]["Output"]


def test_runtime_image_follows_the_package_version(monkeypatch):
    from advpatch import __version__

    monkeypatch.delenv(settings.ENV_IMAGE, raising=False)
    monkeypatch.delenv(settings.ENV_IMAGE_TAG, raising=False)
    monkeypatch.setenv(settings.ENV_IMAGE_REGISTRY, "registry.example:5000/ml/")
    assert settings.runtime_image() == f"registry.example:5000/ml/advpatch:{__version__}"
    monkeypatch.setenv(settings.ENV_IMAGE, "mine:dev")
    assert settings.runtime_image() == "mine:dev"


@pytest.mark.slow
def test_mnist_patch_pipeline_end_to_end(mnist_folder, tmp_path, monkeypatch):
    """The short pipeline through kfp.local: results.json and the MLflow runs behind it."""
    from advpatch import cli

    monkeypatch.delenv(settings.ENV_TRACKING_URI, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "mnist-patch", "-p", f"data_dir={mnist_folder}", "-p", "max_iter=300"]) == 0
    results = json.loads((tmp_path / "outputs" / "run" / "results.json").read_text())
    assert results["format"] == "advpatch-results"
    steps = {s["step"]: s for s in results["steps"]}
    assert [s["step"] for s in results["steps"]] == ["train", "gen_patch", "deploy_patch", "infer", "infer"]
    assert steps["train"]["details"]["model_uri"] == "models:/mnist_le_net/1"
    clean, patched = results["evaluations"]
    assert clean["label"] == "baseline / clean test" and clean["num_examples"] == 80
    assert clean["accuracy"] > 0.6  # 300 training images, 15 epochs
    assert "targeted_success_rate" not in clean
    # the defaults: 3 patches, target 5, centre, scale 0.4, every test image corrupted
    assert steps["gen_patch"]["details"]["targets"] == ["5", "5", "5"]
    assert steps["deploy_patch"]["metrics"]["num_patched"] == 80
    assert patched["label"] == "baseline / patched test" and patched["num_patched"] == 80
    assert patched["accuracy"] < clean["accuracy"] - 0.3
    assert patched["targeted_success_rate"] > 0.5
    assert steps["infer"]["confusion_matrix"]["categories"] == [str(i) for i in range(10)]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("mnist")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["kfp.task_name"] for c in children) == [
        "deploy-patch", "gen-patch", "infer", "infer-2", "load-dataset", "load-dataset-2", "train"]
    assert mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/results.json")["evaluations"] == results["evaluations"]


@pytest.mark.slow
def test_demo_runs_the_full_experiment_on_a_mnist_layout_folder(mnist_folder, tmp_path, monkeypatch, capsys):
    """What `make demo DATA=...` runs: every row of the seed notebook's experiment."""
    from advpatch import cli

    monkeypatch.delenv(settings.ENV_TRACKING_URI, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--data", str(mnist_folder)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "outputs" / "demo" / "results.json").read_text())
    rows = {r["label"]: r for r in results["comparison"]}
    assert list(rows) == ["baseline", "spatial smoothing", "JPEG compression", "Gaussian noise",
                          "trained on patched data", "PGD adversarial training"]
    for label, row in rows.items():
        assert {"clean_accuracy", "patched_accuracy", "targeted_success_rate"} <= set(row), label
        assert f"| {label}" in printed
    assert rows["baseline"]["patched_accuracy"] < rows["baseline"]["clean_accuracy"] - 0.3
    # training on patched images (the attacker's own patches) recovers most of the accuracy
    assert rows["trained on patched data"]["patched_accuracy"] > rows["baseline"]["patched_accuracy"] + 0.2
    trains = [s for s in results["steps"] if s["step"] == "train"]
    assert [t["details"]["model_uri"] for t in trains] == [
        "models:/mnist_baseline_le_net/1", "models:/mnist_patched_le_net/1", "models:/mnist_pgd_le_net/1"]
    assert trains[2]["metrics"]["test_pgd_accuracy"] > trains[0]["metrics"]["test_pgd_accuracy"]


def test_bad_pipeline_parameter_fails_fast_with_a_clear_message(capsys, tmp_path, monkeypatch):
    from advpatch import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "mnist-experiment", "-p", "model_architecture=lenet5"]) == 2
    assert "model_architecture must be one of 'le_net'" in capsys.readouterr().err
    assert cli.main(["run", "mnist-patch", "-p", "epochs=many"]) == 2
    assert "epochs must be of type Float, got 'many'" in capsys.readouterr().err
    assert cli.main(["run", "mnist-patch", "-p", "colour=red"]) == 2
    assert "colour is not a parameter of advpatch-mnist-patch" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
