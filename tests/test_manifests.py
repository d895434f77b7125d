"""Kubernetes manifests: rendered with kustomize, validated offline against the Kubernetes
schemas (strict), checked against the "restricted" pod-security profile, and the CI Job's own
script run against a recording fake of the KFP API."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["cpu", "gpu"]
KUBECTL = shutil.which("kubectl")

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP  # noqa: E402

def render(overlay: str) -> str:
    assert KUBECTL, "kubectl (with kustomize) is needed to render the manifests; it is on the machine image"
    return subprocess.run([KUBECTL, "kustomize", str(ROOT / "manifests" / "overlays" / overlay)], check=True,
                          capture_output=True, text=True).stdout


def objects(overlay: str):
    return [o for o in yaml.safe_load_all(render(overlay)) if o]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_against_kubernetes_schemas(overlay, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render(overlay))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    for version in ("1.29.0", "1.32.0"):
        result = subprocess.run([str(validator), "--strict", "-k", version, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "passed for resource job/advpatch-smoke" in result.stdout


def test_secret_template_validates(tmp_path):
    validator = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(validator), "--strict", str(ROOT / "manifests/templates/s3-credentials-secret.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _pod_specs(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_profile_and_set_resources(overlay):
    objs = objects(overlay)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "PersistentVolumeClaim", "Role", "RoleBinding",
                     "Service", "ServiceAccount"]
    ns = next(o for o in objs if o["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"].get("namespace", "advpatch") == "advpatch" for o in objs)
    specs = dict(_pod_specs(objs))
    assert set(specs) == {"mlflow", "advpatch-smoke"}
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert all("hostPath" not in v for v in spec.get("volumes", []))
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc.get("privileged") and sc.get("readOnlyRootFilesystem") is True
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
            image = c["image"]
            assert image.startswith("ghcr.io/advpatch/advpatch:") and not image.endswith(":latest")
    # no credential in anything kustomize renders: S3 keys come from the KFP secret by reference
    assert not [o for o in objs if o["kind"] == "Secret"]
    mlflow = specs["mlflow"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in mlflow["env"] if "valueFrom" in e}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "mlpipeline-minio-artifact", "key": "secretkey"}


def test_gpu_overlay_compiles_the_smoke_pipeline_for_gpus():
    def compile_args(overlay):
        job = next(o for o in objects(overlay) if o["kind"] == "Job")
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env["COMPILE_ARGS"]

    assert compile_args("cpu") == "--no-gpu"
    assert "--accelerator-type nvidia.com/gpu" in compile_args("gpu") and "-gpu" in compile_args("gpu")


@pytest.mark.parametrize("overlay, final_state, expected_rc", [("cpu", "SUCCEEDED", 0), ("gpu", "FAILED", 1)])
def test_ci_job_script_submits_waits_and_fails_with_the_run(overlay, final_state, expected_rc, tmp_path):
    """The Job's own command, run here against the fake KFP API: it compiles, uploads, starts a run,
    waits, and exits non-zero (failing the Job) when the run fails."""
    job = next(o for o in objects(overlay) if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("/tmp/", f"{tmp_path}/").replace("--poll 15", "--poll 0.05")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    with FakeKFP(final_state=final_state) as kfp_api:
        result = subprocess.run(
            container["command"] + [script], capture_output=True, text=True,
            env={**os.environ, **env, "HOME": str(tmp_path), "KFP_HOST": kfp_api.url,
                 "KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "no-token"),
                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        runs = [r for r in kfp_api.requests if r["path"] == "/apis/v2beta1/runs"]
    assert result.returncode == expected_rc, result.stdout + result.stderr
    assert len(runs) == 1 and (tmp_path / "smoke.yaml").is_file()
    spec = next(yaml.safe_load_all((tmp_path / "smoke.yaml").read_text()))
    gpu = [n for n, e in spec["deploymentSpec"]["executors"].items() if "accelerator" in e["container"]["resources"]]
    assert bool(gpu) == (overlay == "gpu")
