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
from advpatch.params import ParameterError

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP  # noqa: E402

GPU_EXECUTORS = {"train", "gen-patch", "deploy-patch", "infer"}


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
    assert len(executors) == 27  # one per task: KFP gives tasks with their own resources their own executor
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
        if _kind(name) in GPU_EXECUTORS:
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
            assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "accelerator" not in res and "nodeSelector" not in k8s and "tolerations" not in k8s
    assert {_kind(n) for n in executors if "accelerator" in executors[n]["container"]["resources"]} == GPU_EXECUTORS
    # no credential reaches a compiled pipeline
    assert "sentinel" not in text and "minio123" not in text and "AKIA" not in text


def test_placement_options(tmp_path):
    _, spec, platform = _compile(
        tmp_path, "--gpu-steps", "gen_patch", "--accelerator-type", "amd.com/gpu", "--accelerator-limit", "2",
        "--node-selector", "pool=gpu-a100", "--node-selector", "zone=b", "--toleration", "dedicated=ml:NoExecute",
        "--toleration", "nvidia.com/gpu", "--cpu-request", "500m", "--memory-limit", "16Gi", "--s3-secret", "",
        "--config-map", "", "--image-registry", "reg.local:5000/team", "--image-tag", "dev")
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


@pytest.mark.parametrize("args, message", [
    (["--gpu-steps", "training"], "gpu steps must be among"),
    (["--toleration", "key:Sometimes"], "toleration must look like"),
    (["--node-selector", "novalue"], "--node-selector takes KEY=VALUE"),
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
        assert ("POST", "/apis/v2beta1/pipelines/upload_version") in [(r["method"], r["path"]) for r in kfp_api.requests]
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
