"""Cluster placement in compiled pipelines and submit against a recording fake of the KFP API.
(The compiled YAML is run back through kfp.local in tests/test_pipeline.py, and gives the same
bytes as the direct run.)"""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from advpatch.app import cli
from advpatch.params import PREPROCESSING_DEFENCES

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP

GPU_EXECUTORS = {"train", "gen-patch"}


def _compile(tmp_path, *args, name="mnist-experiment"):
    out = tmp_path / f"{name}.yaml"
    assert cli.main(["compile", name, "--output", str(out), *args]) == 0
    text = out.read_text()
    spec, platform = list(yaml.safe_load_all(text))
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _kind(executor: str) -> str:
    return re.sub(r"^exec-|-\d+$", "", executor)


def _strict_parse(spec, platform_doc):
    """Both documents parse strictly into KFP's protobuf messages (the SDK has no other validator)."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2

    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    for config in platform_doc.values():
        json_format.ParseDict(config, k8s.KubernetesExecutorConfig(), ignore_unknown_fields=False)


def test_default_cluster_placement(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sentinel-secret-value-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "sentinel-access-key-456")
    text, spec, platform = _compile(tmp_path, "--image", "registry.example.com/ml/advpatch:9.9.9")
    _strict_parse(spec, platform)
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    # one per task (and the exit task): KFP gives tasks with their own resources their own executor
    assert len(executors) == len(tasks) + 1 == 15 + len(PREPROCESSING_DEFENCES)
    for name, executor in executors.items():
        container = executor["container"]
        gpu = _kind(name) in GPU_EXECUTORS
        assert container["image"] == "registry.example.com/ml/advpatch:9.9.9" + ("-gpu" if gpu else "")
        res = container["resources"]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == ("1", "4")
        assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("2Gi", "8Gi")
        k8s = platform[name]
        assert k8s["secretAsEnv"][0]["secretName"] == "mlpipeline-minio-artifact"
        assert {e["secretKey"]: e["envVar"] for e in k8s["secretAsEnv"][0]["keyToEnv"]} == {
            "accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
        assert k8s["configMapAsEnv"][0]["configMapName"] == "advpatch-config"
        assert "MLFLOW_TRACKING_URI" in {e["envVar"] for e in k8s["configMapAsEnv"][0]["keyToEnv"]}
        assert k8s["secretAsEnv"][1]["secretName"] == "advpatch-mlflow-credentials"
        assert {e["envVar"] for e in k8s["secretAsEnv"][1]["keyToEnv"]} == {"MLFLOW_TRACKING_USERNAME",
                                                                          "MLFLOW_TRACKING_PASSWORD"}
        # non-root, as the image's user: a namespace enforcing "restricted" admits the pod
        assert k8s["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}
        # the run a task belongs to comes from its pod's labels, not from an input
        assert {e["name"]: e["fieldPath"] for e in k8s["fieldPathAsEnv"]} == {
            "ADVPATCH_PIPELINE_RUN_ID": "metadata.labels['pipeline/runid']",
            "ADVPATCH_PIPELINE_RUN_NAME": "metadata.labels['workflows.argoproj.io/workflow']"}
        if _kind(name) in GPU_EXECUTORS:
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
            assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "accelerator" not in res and "nodeSelector" not in k8s and "tolerations" not in k8s
    # only the steps that train or optimize take a GPU; the twelve infer steps run on CPU
    assert {_kind(n) for n in executors if "accelerator" in executors[n]["container"]["resources"]} == GPU_EXECUTORS
    # no credential reaches a compiled pipeline
    assert "sentinel" not in text and "minio123" not in text and "AKIA" not in text


def test_placement_options(tmp_path):
    _, spec, platform = _compile(
        tmp_path, "--gpu-steps", "gen_patch", "--accelerator-type", "amd.com/gpu", "--accelerator-limit", "2",
        "--node-selector", "pool=gpu-a100", "--node-selector", "zone=b", "--toleration", "dedicated=ml:NoExecute",
        "--toleration", "nvidia.com/gpu", "--cpu-request", "500m", "--memory-limit", "16Gi", "--s3-secret", "",
        "--mlflow-secret", "", "--config-map", "", "--image-registry", "reg.local:5000/team", "--image-tag", "dev")
    _strict_parse(spec, platform)
    executors = spec["deploymentSpec"]["executors"]
    gpu = [n for n, e in executors.items() if "accelerator" in e["container"]["resources"]]
    assert gpu == ["exec-gen-patch"]
    acc = executors["exec-gen-patch"]["container"]["resources"]["accelerator"]
    assert (acc["resourceType"], acc["resourceCount"]) == ("amd.com/gpu", "2")
    assert platform["exec-gen-patch"]["nodeSelector"]["labels"] == {"pool": "gpu-a100", "zone": "b"}
    assert platform["exec-gen-patch"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
        {"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert all("secretAsEnv" not in c and "configMapAsEnv" not in c for c in platform.values())
    assert executors["exec-train"]["container"]["image"] == "reg.local:5000/team/advpatch:dev"
    assert executors["exec-gen-patch"]["container"]["image"] == "reg.local:5000/team/advpatch:dev-gpu"
    assert executors["exec-train"]["container"]["resources"]["resourceCpuRequest"] == "500m"
    assert executors["exec-train"]["container"]["resources"]["resourceMemoryLimit"] == "16Gi"
    _, spec, _ = _compile(tmp_path, "--no-gpu", name="mnist-patch")
    assert not any("accelerator" in e["container"]["resources"] for e in spec["deploymentSpec"]["executors"].values())


def test_pull_secrets_no_selector_kfp_mlflow_and_no_cache(tmp_path):
    _, spec, platform = _compile(tmp_path, "--image-pull-secret", "regcred", "--image-pull-secret", "other",
                                 "--node-selector", "", "--kfp-mlflow", "--no-cache", "--run-as-user", "2000",
                                 name="mnist-patch")
    _strict_parse(spec, platform)
    for name, k8s in platform.items():
        assert [s["secretName"] for s in k8s["imagePullSecret"]] == ["regcred", "other"], name
        assert "nodeSelector" not in k8s  # --node-selector '': GPU steps go wherever a GPU is
        assert k8s["securityContext"]["runAsUser"] == "2000"
        # KFP's integration sets MLFLOW_TRACKING_URI and the credentials itself
        assert "MLFLOW_TRACKING_URI" not in {e["envVar"] for e in k8s["configMapAsEnv"][0]["keyToEnv"]}
        assert [s["secretName"] for s in k8s["secretAsEnv"]] == ["mlpipeline-minio-artifact"]
    assert "tolerations" in platform["exec-train"]
    for name, executor in spec["deploymentSpec"]["executors"].items():  # each task knows KFP must hand it a run
        assert {"name": "ADVPATCH_KFP_MLFLOW", "value": "true"} in executor["container"]["env"], name
    assert "exit-handler-1" in spec["root"]["dag"]["tasks"]
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in inner.values())


def _resolve(value, run_id: str, run_name: str, task: str):
    """What KFP's driver substitutes for the run placeholders (driver/resolve.go)."""
    return (value.replace("{{$.pipeline_job_uuid}}", run_id).replace("{{$.pipeline_job_name}}", run_name)
            .replace("{{$.pipeline_task_name}}", task).replace("{{$.pipeline_job_create_time_utc}}", run_name))


def _cache_inputs(spec, run_id, run_name):
    """Every cacheable task's resolved input parameters, as KFP's cache key sees them."""
    out = {}
    dags = [spec["root"]["dag"], *[c["dag"] for c in spec["components"].values() if "dag" in c]]
    for dag in dags:
        for name, task in dag["tasks"].items():
            if not task.get("cachingOptions", {}).get("enableCache"):
                continue
            values = {k: _resolve(json.dumps(v, sort_keys=True), run_id, run_name, name)
                      for k, v in task.get("inputs", {}).get("parameters", {}).items()}
            out[name] = values
    return out


@pytest.mark.parametrize("name", ["mnist-patch", "mnist-experiment"])
def test_no_cacheable_task_takes_a_run_unique_input(tmp_path, name):
    """KFP's cache key hashes a task's resolved inputs: an input that names the run would make every
    run a miss. Resolved for two runs of different ids and names, every cacheable task's inputs
    are the same."""
    _, spec, _ = _compile(tmp_path, name=name)
    first = _cache_inputs(spec, "6f1c0d2e-run-one", "advpatch-mnist-run-one")
    second = _cache_inputs(spec, "9a7b3c4d-run-two", "advpatch-mnist-run-two")
    assert first == second
    assert {"train", "gen-patch", "deploy-patch"} <= set(first)  # the expensive steps can be reused
    text = json.dumps(spec)
    assert "pipeline_job_uuid" not in text and "pipeline_job_name" not in text
    # report and close_run exist for this run's MLflow record: never from the cache
    assert not set(first) & {"report", "close-run"}


def test_kubernetes_manifests_for_installs_that_store_pipelines_in_kubernetes(tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    versions = []
    for build in ("a", "b"):
        out = tmp_path / f"{build}.yaml"
        assert cli.main(["compile", "mnist-patch", "--kubernetes-manifests", "--namespace", "team-a",
                         "--output", str(out), "--version-name", f"advpatch-mnist-patch-0.1.0-{build}"]) == 0
        pipeline, version = yaml.safe_load_all(out.read_text())
        assert (pipeline["kind"], version["kind"]) == ("Pipeline", "PipelineVersion")
        assert pipeline["apiVersion"] == version["apiVersion"] == "pipelines.kubeflow.org/v2beta1"
        assert pipeline["metadata"] == {"name": "advpatch-mnist-patch", "namespace": "team-a"}
        assert version["spec"]["pipelineName"] == "advpatch-mnist-patch"
        json_format.ParseDict(version["spec"]["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(),
                              ignore_unknown_fields=False)
        assert version["spec"]["platformSpec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        versions.append(version["metadata"]["name"])
    assert versions == ["advpatch-mnist-patch-0-1-0-a", "advpatch-mnist-patch-0-1-0-b"]  # a new version each build
    assert cli.main(["compile", "mnist-patch", "--kubernetes-manifests", "--output", str(tmp_path / "c.yaml")]) == 0
    assert re.fullmatch(r"advpatch-mnist-patch-[0-9-]+-\d{14}",
                        list(yaml.safe_load_all((tmp_path / "c.yaml").read_text()))[1]["metadata"]["name"])


@pytest.mark.parametrize("args, message", [
    (["--gpu-steps", "training"], "gpu steps must be among"),
    (["--toleration", "key:Sometimes"], "toleration must look like"),
    (["--node-selector", "novalue"], "--node-selector takes KEY=VALUE (or '' for none)"),
])
def test_bad_compile_options(tmp_path, capsys, args, message):
    assert cli.main(["compile", "mnist-patch", "--output", str(tmp_path / "x.yaml"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_submit_uploads_starts_and_waits(tmp_path, capsys):
    _compile(tmp_path, name="mnist-patch")
    package = str(tmp_path / "mnist-patch.yaml")
    with FakeKFP(final_state="SUCCEEDED", polls_before_final=2) as kfp_api:
        rc = cli.main(["submit", "--host", kfp_api.url, "--package", package, "-p", "epochs=1", "-p", "seed=7",
                       "-p", "register_model=false", "--run-name", "ci-smoke", "--wait", "--poll", "0.05"])
        assert rc == 0
        calls = [(r["method"], r["path"]) for r in kfp_api.requests]
        assert calls[0] == ("GET", "/apis/v2beta1/healthz")
        assert ("POST", "/apis/v2beta1/pipelines/upload") in calls
        upload = next(r for r in kfp_api.requests if r["path"].endswith("/upload"))
        assert upload["query"]["name"] == ["advpatch-mnist-patch"]
        assert b"pipelineInfo" in upload["body"] and "multipart/form-data" in upload["content_type"]
        run = json.loads(next(r for r in kfp_api.requests if r["path"] == "/apis/v2beta1/runs")["body"])
        assert run["display_name"] == "ci-smoke"
        assert run["runtime_config"]["parameters"] == {"epochs": 1.0, "seed": 7, "register_model": False}
        assert run["pipeline_version_reference"] == {"pipeline_id": "pipeline-1", "pipeline_version_id": "version-1"}
        assert calls.count(("GET", "/apis/v2beta1/runs/run-1")) == 3
        # a second submit of the same pipeline uploads a new version
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package]) == 0
        requests = [(r["method"], r["path"]) for r in kfp_api.requests]
        assert ("POST", "/apis/v2beta1/pipelines/upload_version") in requests
    assert "run run-1 SUCCEEDED" in capsys.readouterr().out


def test_submit_fails_when_the_run_fails_or_input_is_bad(tmp_path, capsys):
    _compile(tmp_path, name="mnist-patch")
    package = str(tmp_path / "mnist-patch.yaml")
    with FakeKFP(final_state="FAILED") as kfp_api:
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package, "--wait", "--poll", "0.01"]) == 1
        n = len(kfp_api.requests)
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package, "-p", "epochs=lots"]) == 2
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package, "-p", "colour=red"]) == 2
        assert len(kfp_api.requests) == n  # rejected before any request
    err = capsys.readouterr().err
    assert "epochs must be a number, got 'lots'" in err and "-p takes NAME=VALUE" in err
    assert cli.main(["submit", "--host", "http://127.0.0.1:9", "--package", str(tmp_path / "nope.yaml")]) == 2
    assert "package" in capsys.readouterr().err
    # the table judges the values too, before any request
    with FakeKFP() as kfp_api:
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package, "-p", "patch_scale=1.5"]) == 2
        assert kfp_api.requests == []
    assert "patch_scale must be in [0, 1], got 1.5" in capsys.readouterr().err
    from conftest import free_port

    # the API unreachable: a failed service, not bad input (exit 3)
    assert cli.main(["submit", "--host", f"http://127.0.0.1:{free_port()}", "--package", package]) == 3
    err = capsys.readouterr().err
    assert err.startswith("advpatch: error: cannot reach the KFP API at http://127.0.0.1:") and "Traceback" not in err


def test_under_kfp_mlflow_a_task_without_kfp_run_fails_before_its_work(tmp_path, monkeypatch):
    """Compiled with --kfp-mlflow, on a cluster where KFP's plugin failed (run creation goes on without
    it) or lacks injectUserEnvVars: no MLFLOW_RUN_ID. The step must fail with one clear line, not log
    into a SQLite file inside the pod, and write nothing."""
    from advpatch import steps
    from advpatch.errors import AdvpatchError

    monkeypatch.setenv("ADVPATCH_KFP_MLFLOW", "true")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ADVPATCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    with pytest.raises(AdvpatchError, match=r"compiled with --kfp-mlflow, but KFP gave the task no MLFLOW_RUN_ID or "
                                            r"MLFLOW_TRACKING_URI.*injectUserEnvVars"):
        steps.load_dataset(dataset=str(tmp_path / "data"), source="digits", split="test", max_examples=20)
    assert not (tmp_path / "data").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("image", ["reg.local/advpatch@sha256:" + "a" * 64, "reg.local:5000/advpatch"])
def test_the_gpu_image_is_not_guessed_from_a_digest_or_an_untagged_image(image, tmp_path, capsys):
    """`<image>-gpu` after a digest or a registry port is no image: ask for --gpu-image instead."""
    from advpatch.app import cli

    out = str(tmp_path / "p.yaml")
    assert cli.main(["compile", "mnist-patch", "--output", out, "--image", image]) == 2
    assert "give --gpu-image too" in capsys.readouterr().err and not Path(out).exists()
    gpu = "reg.local/advpatch-gpu@sha256:" + "b" * 64
    assert cli.main(["compile", "mnist-patch", "--output", out, "--image", image, "--gpu-image", gpu]) == 0
    executors = next(yaml.safe_load_all(Path(out).read_text()))["deploymentSpec"]["executors"]
    assert executors["exec-gen-patch"]["container"]["image"] == gpu
    assert executors["exec-infer"]["container"]["image"] == image


def test_a_wait_cut_short_terminates_the_run_and_survives_a_passing_api_outage(tmp_path, capsys):
    """`submit --wait` (the CI Job): a few failed polls are waited out; a timeout terminates the run
    (and so would SIGTERM when the Job is deleted or passes its deadline), so that no pipeline runs
    on for a CI job that gave up on it."""
    _compile(tmp_path, name="mnist-patch")
    package = str(tmp_path / "mnist-patch.yaml")
    with FakeKFP(final_state="SUCCEEDED", polls_before_final=1, fail_polls=2) as kfp_api:
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package, "--wait", "--poll", "0.01"]) == 0
        assert kfp_api.terminated == []
    with FakeKFP(final_state="SUCCEEDED", polls_before_final=10**6) as kfp_api:
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package, "--wait", "--poll", "0.01",
                         "--timeout", "1"]) == 1
        assert kfp_api.terminated == ["run-1"]
    assert "run run-1 did not finish within 1 s (last state RUNNING): terminated" in capsys.readouterr().err
    with FakeKFP(final_state="SUCCEEDED", fail_polls=10**6) as kfp_api:
        assert cli.main(["submit", "--host", kfp_api.url, "--package", package, "--wait", "--poll", "0.01"]) == 3
    assert "lost the KFP API while waiting for run run-1: 4 polls in a row failed" in capsys.readouterr().err


def test_sigterm_during_the_wait_terminates_the_run(tmp_path):
    """What deleting the CI Job (or its deadline) does to `advpatch submit --wait` in its pod."""
    import os
    import signal
    import subprocess
    import time

    _compile(tmp_path, name="mnist-patch")
    with FakeKFP(final_state="SUCCEEDED", polls_before_final=10**6) as kfp_api:
        proc = subprocess.Popen([sys.executable, "-m", "advpatch.app.cli", "submit", "--host", kfp_api.url, "--package",
                                 str(tmp_path / "mnist-patch.yaml"), "--wait", "--poll", "0.05"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any(r["path"] == "/apis/v2beta1/runs/run-1" for r in list(kfp_api.requests)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out + err
        assert kfp_api.terminated == ["run-1"]
    assert "was still running when advpatch submit was stopped: terminated" in err
