"""Kubernetes manifests: both install modes (single-user, multi-user) x (cpu, gpu), rendered with
kustomize, validated offline against the Kubernetes schemas (strict), checked against the
"restricted" pod-security profile, and the CI Job's own script and run-smoke.sh run against
recording fakes of the KFP API and of kubectl."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["single-user/cpu", "single-user/gpu", "multi-user/cpu", "multi-user/gpu"]
NAMESPACES = {"single-user": "kubeflow", "multi-user": "advpatch"}
KUBECTL = shutil.which("kubectl")

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP  # noqa: E402


def render(overlay: str, manifests: Path = ROOT / "manifests") -> str:
    assert KUBECTL, "kubectl (with kustomize) is needed to render the manifests; it is on the machine image"
    return subprocess.run([KUBECTL, "kustomize", str(manifests / "overlays" / overlay)], check=True,
                          capture_output=True, text=True).stdout


def objects(overlay: str):
    return [o for o in yaml.safe_load_all(render(overlay)) if o]


def _one(objs, kind, name):
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_against_kubernetes_schemas(overlay, tmp_path):
    path = tmp_path / "rendered.yaml"
    path.write_text(render(overlay))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    for version in ("1.29.0", "1.32.0"):
        result = subprocess.run([str(validator), "--strict", "-k", version, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        for resource in ("job/advpatch-smoke", "deployment/advpatch-mlflow", "statefulset/advpatch-postgres",
                         "networkpolicy/advpatch-mlflow"):
            assert f"passed for resource {resource}" in result.stdout, resource


@pytest.mark.parametrize("template", sorted((ROOT / "manifests" / "templates").glob("*-secret.yaml")),
                         ids=lambda p: p.name)
def test_secret_templates_validate(template):
    validator = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(validator), "--strict", str(template)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _pod_specs(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_where_the_runs_execute_and_owns_no_namespace(overlay):
    objs = objects(overlay)
    namespace = NAMESPACES[overlay.split("/")[0]]
    assert sorted(o["kind"] for o in objs) == sorted(
        ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "NetworkPolicy", "Role", "RoleBinding", "Service",
         "Service", "ServiceAccount", "StatefulSet"])
    assert all(o["metadata"]["namespace"] == namespace for o in objs)  # no Namespace object: no label of ours on it
    text = render(overlay)
    assert ".NAMESPACE" not in text and "ARTIFACTS_PREFIX" not in text  # the base's placeholders, all replaced
    assert not [o for o in objs if o["kind"] == "Secret"]  # credentials only by reference
    config = _one(objs, "ConfigMap", "advpatch-config")["data"]
    assert config["MLFLOW_TRACKING_URI"] == f"http://advpatch-mlflow.{namespace}.svc:5000"
    hosts = config["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert f"advpatch-mlflow.{namespace}.svc:5000" in hosts
    assert f"advpatch-mlflow.{namespace}.svc.cluster.local:5000" in hosts
    assert config["ADVPATCH_S3_ENDPOINT"] == config["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs.kubeflow.svc:8333"
    prefix = "artifacts/" if namespace == "kubeflow" else f"private/{namespace}/"
    assert config["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://mlpipeline/{prefix}mlflow"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_profile_and_set_resources(overlay):
    specs = dict(_pod_specs(objects(overlay)))
    assert set(specs) == {"advpatch-mlflow", "advpatch-postgres", "advpatch-smoke"}
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert all("hostPath" not in v for v in spec.get("volumes", []))
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc.get("privileged") and sc.get("readOnlyRootFilesystem") is True
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_runs_on_postgres_with_basic_auth_and_its_service_names(overlay):
    objs = objects(overlay)
    container = _one(objs, "Deployment", "advpatch-mlflow")["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    for flag in ('--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"', "--app-name basic-auth", "--serve-artifacts"):
        assert flag in script
    # the database URL (its password) reaches mlflow server by its environment, never its argv (ps shows argv)
    assert "--backend-store-uri" not in script and "BACKEND_STORE_URI" not in " ".join(container["command"])
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg://mlflow:$(POSTGRES_PASSWORD)@")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "advpatch-mlflow-server",
                                                                     "key": "postgres-password"}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "advpatch-mlflow-credentials"
    assert list(env).index("POSTGRES_PASSWORD") < list(env).index("MLFLOW_BACKEND_STORE_URI")  # $(VAR) order
    policies = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    assert policies["advpatch-postgres"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "advpatch-mlflow"}}}]
    sources = policies["advpatch-mlflow"]["ingress"][0]["from"]
    assert {"podSelector": {}} in sources  # this namespace: the steps (no sidecar), the CI Job
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}},
            "podSelector": {"matchLabels": {"app": "ml-pipeline"}}} in sources  # KFP's MLflow plugin
    egress_ports = {p["port"] for rule in policies["advpatch-mlflow"]["egress"] for p in rule["ports"]}
    assert {5432, 8333, 9000, 53} <= egress_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ci_job_compiles_for_its_own_image_and_mode(overlay):
    job = _one(objects(overlay), "Job", "advpatch-smoke")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["ADVPATCH_IMAGE"]["value"] == container["image"] == "ghcr.io/advpatch/advpatch:0.1.0"
    gpu = overlay.endswith("gpu")
    assert (env["COMPILE_ARGS"]["value"] == "--no-gpu") != gpu
    multi = overlay.startswith("multi-user")
    assert ("KFP_NAMESPACE" in env) == multi
    if multi:
        assert env["KFP_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["kfp-token"] == "/var/run/secrets/kubeflow/pipelines"  # where advpatch submit looks


@pytest.mark.parametrize("overlay, final_state, expected_rc", [
    ("single-user/cpu", "SUCCEEDED", 0), ("multi-user/gpu", "FAILED", 1), ("multi-user/cpu", "SUCCEEDED", 0)])
def test_ci_job_script_submits_with_token_and_namespace_and_fails_with_the_run(overlay, final_state, expected_rc,
                                                                             tmp_path):
    """The Job's own command, run here against the fake KFP API as the Job runs it (token file at
    the projected path, namespace from the downward API): it compiles, uploads, starts a run, waits,
    and exits non-zero (failing the Job) when the run fails."""
    job = _one(objects(overlay), "Job", "advpatch-smoke")
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("/tmp/", f"{tmp_path}/").replace("--poll 15", "--poll 0.05")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    if any(e["name"] == "KFP_NAMESPACE" for e in container["env"]):
        env["KFP_NAMESPACE"] = job["metadata"]["namespace"]  # what the downward API gives the pod
    token = tmp_path / "token"
    token.write_text("projected-sa-token-0123")
    with FakeKFP(final_state=final_state) as kfp_api:
        result = subprocess.run(
            container["command"] + [script], capture_output=True, text=True,
            env={**os.environ, **env, "HOME": str(tmp_path), "KFP_HOST": kfp_api.url,
                 "KF_PIPELINES_SA_TOKEN_PATH": str(token),
                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        requests, experiments = list(kfp_api.requests), list(kfp_api.experiments)
    assert result.returncode == expected_rc, result.stdout + result.stderr
    assert len([r for r in requests if r["path"] == "/apis/v2beta1/runs"]) == 1
    assert requests and all(r["authorization"] == "Bearer projected-sa-token-0123" for r in requests)
    namespace = env.get("KFP_NAMESPACE", "")
    if namespace:  # every call that names a namespace names this one; the pipeline is the namespace's own
        assert [e["namespace"] for e in experiments] == [namespace]
        listing = next(r for r in requests if r["path"] == "/apis/v2beta1/pipelines")
        upload = next(r for r in requests if r["path"] == "/apis/v2beta1/pipelines/upload")
        assert listing["query"]["namespace"] == [namespace] and upload["query"]["namespace"] == [namespace]
    else:
        assert [e.get("namespace", "") for e in experiments] in ([""], ["kubeflow"])
    spec = next(yaml.safe_load_all((tmp_path / "smoke.yaml").read_text()))
    gpu = [n for n, e in spec["deploymentSpec"]["executors"].items() if "accelerator" in e["container"]["resources"]]
    assert bool(gpu) == overlay.endswith("gpu")
    assert all(e["container"]["image"].startswith(job["spec"]["template"]["spec"]["containers"][0]["image"])
               for e in spec["deploymentSpec"]["executors"].values())


FAKE_KUBECTL = r'''#!/usr/bin/env python3
"""Records each call; answers kustomize, delete, apply, get (the Job's conditions) and logs."""
import json, os, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_STATE"])
calls = json.loads(state.read_text()) if state.exists() else []
calls.append(sys.argv[1:])
state.write_text(json.dumps(calls))
if sys.argv[1] == "kustomize":
    sys.stdout.write(subprocess.run([os.environ["REAL_KUBECTL"], *sys.argv[1:]], capture_output=True, text=True).stdout)
elif "get" in sys.argv:
    polls = sum("get" in c for c in calls)
    if polls <= int(os.environ.get("FAKE_GET_ERRORS", "0")):
        sys.exit("The connection to the server was refused")
    print(os.environ["FAKE_FINAL"] + " " if polls >= 3 else "", end="")
elif "logs" in sys.argv:
    print("run run-1 " + os.environ["FAKE_FINAL"])
'''


@pytest.mark.parametrize("final, expected_rc", [("Complete", 0), ("Failed", 1)])
def test_run_smoke_replaces_the_job_and_returns_on_failure_as_on_success(tmp_path, final, expected_rc):
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    result = subprocess.run(
        [str(ROOT / "manifests" / "ci" / "run-smoke.sh"), str(ROOT / "manifests" / "overlays" / "multi-user" / "cpu"),
         "60"], capture_output=True, text=True,
        env={**os.environ, "KUBECTL": str(fake), "REAL_KUBECTL": KUBECTL, "FAKE_STATE": str(tmp_path / "calls.json"),
             "FAKE_FINAL": final, "POLL": "0"}, timeout=60)
    assert result.returncode == expected_rc, result.stdout + result.stderr
    import json

    calls = [c for c in json.loads((tmp_path / "calls.json").read_text()) if c[0] != "kustomize"]
    assert calls[0][:5] == ["-n", "advpatch", "delete", "job", "advpatch-smoke"]  # the last Job goes first
    assert calls[1][:2] == ["apply", "-k"]
    assert sum("get" in c for c in calls) == 3 and calls[-1][2] == "logs"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_servers_opt_out_of_istio_sidecars_as_kfp_step_pods_do(overlay):
    """KFP puts sidecar.istio.io/inject: "false" on every pipeline pod; in a Kubeflow profile namespace
    (istio-injection=enabled) a server with a sidecar would refuse their plain-text requests."""
    objs = objects(overlay)
    for kind, name in (("Deployment", "advpatch-mlflow"), ("StatefulSet", "advpatch-postgres")):
        template = _one(objs, kind, name)["spec"]["template"]["metadata"]
        # the label is what Istio's injector webhook selects on; the annotation, what the injector reads
        assert template["labels"]["sidecar.istio.io/inject"] == "false", name
        assert template["annotations"]["sidecar.istio.io/inject"] == "false", name


@pytest.mark.parametrize("overlay", ["single-user/gpu", "multi-user/cpu"])
def test_one_image_setting_in_an_overlay_moves_every_advpatch_container(overlay, tmp_path):
    """README step 4: set the image in the overlay's `images:`; the MLflow server, the CI Job and the
    image the Job compiles the pipeline for all follow (none stays on the default)."""
    manifests = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", manifests)
    path = manifests / "overlays" / overlay / "kustomization.yaml"
    config = yaml.safe_load(path.read_text())
    (entry,) = [i for i in config["images"] if i["name"] == "advpatch"]
    entry.update(newName="registry.example.com/ml/advpatch", newTag="0.1.0-rc1")
    path.write_text(yaml.safe_dump(config))
    objs = [o for o in yaml.safe_load_all(render(overlay, manifests)) if o]
    images = {name: [c["image"] for c in spec["containers"]] for name, spec in _pod_specs(objs)}
    assert images["advpatch-mlflow"] == images["advpatch-smoke"] == ["registry.example.com/ml/advpatch:0.1.0-rc1"]
    job = _one(objs, "Job", "advpatch-smoke")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in job["env"]}
    assert env["ADVPATCH_IMAGE"] == "registry.example.com/ml/advpatch:0.1.0-rc1"
    assert "ghcr.io/advpatch" not in render(overlay, manifests)


def test_the_image_pull_secret_component_reaches_the_servers_the_job_and_the_compiled_pipeline(tmp_path):
    """Private registries: the component adds the pull secret to the MLflow server and the Job, and the
    Job compiles the pipeline with it (whatever order the overlay lists its components in)."""
    manifests = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", manifests)
    mine = manifests / "overlays" / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "kubeflow",
        "resources": ["../../base", "../../ci"],
        "components": ["../../components/image-pull-secret", "../../components/single-user", "../../components/gpu"],
        "images": [{"name": "advpatch", "newName": "ghcr.io/advpatch/advpatch", "newTag": "0.1.0"}]}))
    objs = [o for o in yaml.safe_load_all(render("mine", manifests)) if o]
    specs = dict(_pod_specs(objs))
    for name in ("advpatch-mlflow", "advpatch-smoke"):
        assert specs[name]["imagePullSecrets"] == [{"name": "advpatch-image-pull"}], name
    env = {e["name"]: e.get("value") for e in specs["advpatch-smoke"]["containers"][0]["env"]}
    assert env["COMPILE_EXTRA"] == "--image-pull-secret advpatch-image-pull"
    assert env["COMPILE_ARGS"] == "--accelerator-type nvidia.com/gpu --accelerator-limit 1"  # gpu's, by name
    script = specs["advpatch-smoke"]["containers"][0]["args"][0]
    assert "$COMPILE_ARGS $COMPILE_EXTRA" in script
    import shlex

    from advpatch.app import cli

    out = tmp_path / "smoke.yaml"
    assert cli.main(["compile", "mnist-patch", "--output", str(out), *shlex.split(env["COMPILE_ARGS"]),
                     *shlex.split(env["COMPILE_EXTRA"])]) == 0
    platform = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform and all([s["secretName"] for s in e["imagePullSecret"]] == ["advpatch-image-pull"]
                            for e in platform.values())


def test_run_smoke_waits_out_a_passing_api_error_and_deletes_the_job_at_its_timeout(tmp_path):
    import json

    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    env = {**os.environ, "KUBECTL": str(fake), "REAL_KUBECTL": KUBECTL, "FAKE_STATE": str(tmp_path / "calls.json"),
           "POLL": "0"}
    overlay = str(ROOT / "manifests" / "overlays" / "single-user" / "cpu")
    result = subprocess.run([str(ROOT / "manifests" / "ci" / "run-smoke.sh"), overlay, "60"], capture_output=True,
                            text=True, env={**env, "FAKE_FINAL": "Complete", "FAKE_GET_ERRORS": "2"}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "calls.json").unlink()
    result = subprocess.run([str(ROOT / "manifests" / "ci" / "run-smoke.sh"), overlay, "0"], capture_output=True,
                            text=True, env={**env, "FAKE_FINAL": ""}, timeout=60)
    assert result.returncode == 1 and "deleting it" in result.stderr
    calls = [c for c in json.loads((tmp_path / "calls.json").read_text()) if c[0] != "kustomize"]
    assert calls[-1][:5] == ["-n", "kubeflow", "delete", "job", "advpatch-smoke"]  # its submit then terminates the run
