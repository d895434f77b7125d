"""Pipelines: compiled specs, and whole runs through kfp.local."""

import json
import subprocess
import sys

import pytest
import yaml

from advpatch import settings


def test_compiling_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from kfp import compiler; from advpatch.pipelines import PIPELINES;"
        f"compiler.Compiler().compile(PIPELINES['mnist-patch'], {str(tmp_path / 'p.yaml')!r});"
        "assert 'tensorflow' not in sys.modules and 'mlflow' not in sys.modules, 'heavy import at compile time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "advpatch-mnist-patch"
    executors = spec["deploymentSpec"]["executors"]
    assert executors and all(e["container"]["image"] == settings.runtime_image() for e in executors.values())
    # components are lightweight and never pip-install kfp at run time
    for e in executors.values():
        assert "pip install" not in " ".join(e["container"]["command"])
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"load-dataset", "load-dataset-2", "train", "gen-patch", "deploy-patch", "infer",
                          "infer-2", "report"}
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
def test_demo_on_a_mnist_layout_folder_end_to_end(mnist_folder, tmp_path, monkeypatch):
    """What `make demo DATA=...` runs: the whole pipeline through kfp.local, results.json, MLflow."""
    from advpatch import cli

    monkeypatch.delenv(settings.ENV_TRACKING_URI, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--data", str(mnist_folder)]) == 0
    results = json.loads((tmp_path / "outputs" / "demo" / "results.json").read_text())
    assert results["format"] == "advpatch-results"
    steps = {s["step"]: s for s in results["steps"]}
    assert [s["step"] for s in results["steps"]] == ["train", "gen_patch", "deploy_patch", "infer", "infer"]
    assert steps["train"]["details"]["model_uri"] == "models:/mnist_le_net/1"
    clean, patched = results["evaluations"]
    assert clean["label"] == "baseline / clean test" and clean["num_examples"] == 80
    assert clean["accuracy"] > 0.6  # 300 training images, 15 epochs
    assert "targeted_success_rate" not in clean
    # the demo's defaults: 3 patches, target 5, centre, scale 0.4, every test image corrupted
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


def test_bad_pipeline_parameter_fails_fast_with_a_clear_message(capsys, tmp_path, monkeypatch):
    from advpatch import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "mnist-patch", "-p", "model_architecture=lenet5"]) == 2
    assert "model_architecture must be one of 'le_net'" in capsys.readouterr().err
    assert cli.main(["run", "mnist-patch", "-p", "epochs=many"]) == 2
    assert "epochs must be of type Float, got 'many'" in capsys.readouterr().err
    assert cli.main(["run", "mnist-patch", "-p", "colour=red"]) == 2
    assert "colour is not a parameter of advpatch-mnist-patch" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
