"""Secrets leak nowhere: known S3 keys, MLflow credentials and a KFP token are planted in the
environment of what a user runs (`advpatch run` twice, `advpatch compile` for every pipeline,
`advpatch submit`), then everything those commands wrote is searched for them, as raw bytes and
as base64, URL-encoded and JSON-escaped text, inside archives too: every file, every printed line,
the MLflow records (through its API) and artifacts (in S3), the requests the KFP API received."""

import base64
import bz2
import gzip
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from fake_kfp import FakeKFP
from test_mlflow import ADMIN, manifest_mlflow  # noqa: F401  (a fixture: MLflow as the cluster runs it)

MLFLOW_USER = "planted-mlflow-user-7f3a9c"
MLFLOW_PASSWORD = "PLANTED/mlflow+password=7f3a9c51e2d8"
KFP_TOKEN = "PLANTED.kfp-sa-token/7f3a9c+d4e8b2c6a1=="
SECRETS = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
           "MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
           "KFP token": KFP_TOKEN}
"""What must not leak. The S3 keys are SeaweedFS's real ones (conftest), so that a run really
reads its data with them; the MLflow user is made on a server that refuses requests without it."""
OWNER_FIELDS = ("user_id", "mlflow.user")
"""Where MLflow records who made a run or model: the login (MLFLOW_TRACKING_USERNAME) when there
is one, by MLflow's design (mlflow.tracking.context.default_context). The user name may appear
there, and only there (the password never)."""

TINY = {"epochs": 1, "max_iter": 5, "num_patch": 1, "num_patch_gen_samples": 10}
"""The shortest mnist-patch that still runs every task (about 25 s on 2 cores)."""


def _forms(secret: str):
    """``secret`` as it could be written: raw, URL-encoded, JSON-escaped, and base64 (standard and
    URL-safe) at each of the three alignments it can have inside a longer encoded text (the
    characters that depend on its neighbours left off, e.g. a password in a Basic auth header)."""
    raw = secret.encode()
    forms = {"raw": raw, "url": quote(secret, safe="").encode(), "url+": quote_plus(secret).encode(),
             "json": secret.replace("/", "\\/").encode()}
    forms["url-lower"] = re.sub(rb"%[0-9A-F]{2}", lambda m: m[0].lower(), forms["url"])
    for offset, skip in ((0, 0), (1, 2), (2, 3)):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            forms[f"{name}@{offset}"] = encode(b"\0" * offset + raw)[skip:-4]
    assert all(len(f) >= 16 for f in forms.values())
    unique = {}
    for name, form in forms.items():  # a secret with no character to escape has fewer forms
        unique.setdefault(form, name)
    return {name: form for form, name in unique.items()}


PATTERNS = {name: _forms(value) for name, value in SECRETS.items()}


def _members(data: bytes):
    """What a compressed file or an archive holds: (name, bytes) pairs, none for anything else."""
    try:
        if data[:2] == b"\x1f\x8b":
            yield "gunzip", gzip.decompress(data)
        elif data[:3] == b"BZh":
            yield "bunzip2", bz2.decompress(data)
        elif data[:6] == b"\xfd7zXZ\x00":
            yield "unxz", lzma.decompress(data)
        elif data[:4] == b"PK\x03\x04":  # .zip, .keras, .npz, .whl
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for info in z.infolist():
                    if not info.is_dir():
                        yield info.filename, z.read(info)
        elif len(data) >= 512 and data[257:262] == b"ustar":
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                for m in t.getmembers():
                    if m.isfile():
                        yield m.name, t.extractfile(m).read()
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError) as e:
        yield "(unreadable)", repr(e).encode()


class Scan:
    """Searches blobs for every form of every secret, and counts what it searched."""

    def __init__(self) -> None:
        self.hits, self.blobs, self.bytes, self.members = [], 0, 0, 0
        self.files, self.file_bytes = 0, 0

    def blob(self, where: str, data: bytes, depth: int = 0, allow=()) -> None:
        """Search ``data`` (and what it holds); ``allow``: secrets' names it may hold."""
        self.blobs += 1
        self.bytes += len(data)
        for name, forms in PATTERNS.items():
            for form, pattern in forms.items():
                if name not in allow and pattern in data:
                    self.hits.append(f"{where}: {name} ({form})")
        for member, content in _members(data):
            self.members += 1
            if depth < 4:
                self.blob(f"{where}!{member}", content, depth + 1, allow)

    def tree(self, root: Path, allow=None) -> None:
        """Every file under ``root``; ``allow``: file name -> secrets' names it may hold."""
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                self.files += 1
                self.file_bytes += len(data)
                self.blob(str(path), data, allow=(allow or {}).get(path.name, ()))


def test_the_scan_finds_every_form_it_looks_for():
    """The search itself: a password in a Basic auth header, a token URL-encoded in a query, a key
    inside a gzipped tar inside a zip are all found; the same bytes without them are clean."""
    header = b"Authorization: Basic " + base64.b64encode(f"{MLFLOW_USER}:{MLFLOW_PASSWORD}".encode())
    query = b"GET /x?token=" + quote(KFP_TOKEN, safe="").encode()
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        info = tarfile.TarInfo("conf/keys.json")
        payload = json.dumps({"secret": S3_SECRET_KEY}).encode()
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("deep/data.tar.gz", inner.getvalue())
    scan = Scan()
    for name, data in (("header", header), ("query", query), ("archive", outer.getvalue())):
        scan.blob(name, data)
    assert {h.split(" (")[0] for h in scan.hits} == {
        "header: MLFLOW_TRACKING_USERNAME", "header: MLFLOW_TRACKING_PASSWORD", "query: KFP token",
        "archive!deep/data.tar.gz!gunzip: AWS_SECRET_ACCESS_KEY",  # the tar, and the file in it
        "archive!deep/data.tar.gz!gunzip!conf/keys.json: AWS_SECRET_ACCESS_KEY"}, scan.hits
    clean = Scan()
    clean.blob("clean", b"Authorization: Basic " + base64.b64encode(b"someone:something-else-entirely"))
    assert clean.hits == []


def _run(command, env, cwd, printed):
    """An advpatch command as a user runs it; what it printed is kept for the search."""
    done = subprocess.run([str(Path(sys.executable).parent / "advpatch"), *command], env=env, cwd=cwd,
                          capture_output=True, timeout=600)
    printed.append((" ".join(command[:2]), done.stdout + done.stderr))
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-4000:]


def _params(pairs):
    return [a for k, v in pairs.items() for a in ("-p", f"{k}={v}")]


def _plain(obj, owners):
    """An MLflow entity as plain data, each owner field's value moved to ``owners``."""
    from mlflow.entities._mlflow_object import _MlflowObject

    if isinstance(obj, _MlflowObject):
        obj = dict(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in OWNER_FIELDS:
                owners.append(v)
                v = "(owner)"
            out[str(k)] = _plain(v, owners)
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, owners) for v in obj]
    return obj


def _mlflow_records(client):
    """Everything MLflow's API says about its experiments, runs (params, tags, datasets...) and
    models (logged, registered, their versions), as one JSON text without the owner fields; the
    owners; and how many parameters and tags that was."""
    from mlflow.entities import ViewType

    records, owners = [], []
    counts = {"runs": 0, "params": 0, "tags": 0, "registered_models": 0, "model_versions": 0, "logged_models": 0}
    experiments = client.search_experiments(view_type=ViewType.ALL)
    for exp in experiments:
        records.append(dict(exp))
        counts["tags"] += len(exp.tags)
        runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
        for run in runs:
            records.append(run.to_dictionary())
            counts["runs"] += 1
            counts["params"] += len(run.data.params)
            counts["tags"] += len(run.data.tags)
        for model in client.search_logged_models([exp.experiment_id]):
            records.append(dict(model))
            counts["logged_models"] += 1
            counts["params"] += len(model.params)
            counts["tags"] += len(model.tags)
    for rm in client.search_registered_models():
        records.append(dict(rm))
        counts["registered_models"] += 1
        counts["tags"] += len(rm.tags)
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            records.append(dict(mv))
            counts["model_versions"] += 1
            counts["tags"] += len(mv.tags)
    return json.dumps(_plain(records, owners), default=str).encode(), owners, counts


@pytest.mark.pipeline
def test_no_secret_in_any_log_record_pipeline_or_result(s3_env, mnist_folder, manifest_mlflow,  # noqa: F811 (the fixture)
                                                         tmp_path, tmp_path_factory, monkeypatch, capsys):
    import mlflow
    from mlflow.server.auth.client import AuthServiceClient

    from advpatch.io import storage

    _, bucket = s3_env
    data_dir = f"s3://{bucket}/secrets-test/mnist"
    storage.upload(mnist_folder, data_dir)
    uri = manifest_mlflow["uri"]
    # the MLflow user the steps log in as: made by the server's admin, an admin itself (as on a cluster)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    auth = AuthServiceClient(uri)
    auth.create_user(MLFLOW_USER, MLFLOW_PASSWORD)
    auth.update_user_admin(MLFLOW_USER, True)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)
    token_file = tmp_path_factory.mktemp("kfp-token") / "token"  # outside the searched folder
    token_file.write_text(KFP_TOKEN)
    # everything the commands write lands in `work`: their folders, HOME, and TMPDIR (short, for
    # the warm process's UNIX socket path)
    work = tmp_path / "work"
    temp = Path(tempfile.mkdtemp(prefix="advs-"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ADVPATCH_OUTPUT_DIR")}
    env.update({"HOME": str(work / "home"), "TMPDIR": str(temp), "KF_PIPELINES_SA_TOKEN_PATH": str(token_file)})
    assert {k: env[k] for k in SECRETS if k != "KFP token"} == {k: v for k, v in SECRETS.items() if k != "KFP token"}
    for folder in ("home", "cluster-mlflow", "local-mlflow", "compiled"):
        (work / folder).mkdir(parents=True)
    printed = []
    try:
        # 1. the short pipeline, its data from S3, tracking on the MLflow server that wants a login
        _run(["run", "mnist-patch", *_params({"data_dir": data_dir, "experiment_name": "secrets-cluster", **TINY})],
             {**env, "MLFLOW_TRACKING_URI": uri}, work / "cluster-mlflow", printed)
        # 2. the same with the default local store (advpatch run serves it with its own mlflow server)
        _run(["run", "mnist-patch", *_params({"data_dir": data_dir, "experiment_name": "secrets-local", **TINY})],
             env, work / "local-mlflow", printed)
        # 3. every pipeline compiled for a cluster, in each form
        variants = {"default": ["--image-pull-secret", "regcred"],
                    "kfp-mlflow": ["--kfp-mlflow", "--no-cache", "--no-gpu"],
                    "manifests": ["--kubernetes-manifests", "--namespace", "advpatch"]}
        for name, options in variants.items():
            _run(["compile", "--output", str(work / "compiled" / name), *options], env, work, printed)
        # 4. submitted to a KFP API with the service-account token
        with FakeKFP(final_state="SUCCEEDED") as kfp_api:
            for variant in ("default", "kfp-mlflow"):  # a new pipeline, then a new version of it
                package = work / "compiled" / variant / "mnist-patch.yaml"
                _run(["submit", "--host", kfp_api.url, "--package", str(package), "--namespace", "advpatch",
                      *_params({"data_dir": data_dir, "epochs": 1}), "--wait", "--poll", "0.05"],
                     env, work, printed)
        scan = Scan()
        # the local store's database holds the user name in its owner fields (its records, those
        # fields left out, are searched through MLflow's API below)
        scan.tree(work, allow={"mlflow.db": ("MLFLOW_TRACKING_USERNAME",)})
        scan.tree(temp)  # whatever the commands left in the temporary folder
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    # the planted values were really used: the data came from S3 with those keys, the tasks logged
    # to a server that refuses anyone without the planted login, the KFP API saw the token
    for folder in ("cluster-mlflow", "local-mlflow"):
        results = json.loads((work / folder / "outputs" / "run" / "results.json").read_text())
        assert results["evaluations"][0]["num_examples"] == 80, folder
        (manifest,) = (work / folder / "outputs" / "run" / "kfp").glob("*/load-dataset/dataset/dataset.json")
        assert json.loads(manifest.read_text())["provenance"][0]["source"] == data_dir
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1")
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(request, timeout=10)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("secrets-cluster").experiment_id],
                                   "tags.`advpatch.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    assert len(kfp_api.requests) >= 10 and kfp_api.runs
    assert {r["authorization"] for r in kfp_api.requests} == {f"Bearer {KFP_TOKEN}"}
    files_in_outputs = sum(1 for f in ("cluster-mlflow", "local-mlflow") for p in (work / f).rglob("*") if p.is_file())
    assert files_in_outputs > 80
    for name in ("run/pipeline.log", "run/warm.log", "run/results.json", "run/report.html", "mlflow/server.log"):
        assert (work / "local-mlflow" / "outputs" / name).stat().st_size > 0, name
    assert (work / "local-mlflow" / "outputs" / "mlflow" / "mlflow.db").is_file()
    assert len(list((work / "compiled").rglob("*.yaml"))) == 3 * 7

    # what the commands printed
    for command, text in printed:
        scan.blob(f"output of advpatch {command}", text)
    # what the KFP API received, but for the token in the Authorization header
    for r in kfp_api.requests:
        scan.blob(f"KFP request {r['method']} {r['path']}",
                  json.dumps({k: r[k] for k in ("method", "path", "query", "content_type")}).encode() + r["body"])
        assert not any(p in r["authorization"].encode() for n, f in PATTERNS.items() if n != "KFP token"
                       for p in f.values())
    uploads = [r for r in kfp_api.requests if r["path"].endswith(("/upload", "/upload_version"))]
    assert len(uploads) == 2 and all(b"pipelineInfo" in r["body"] for r in uploads)
    # MLflow's records (both stores) and artifacts (S3 behind the cluster server; the local store's
    # are files under local-mlflow/, searched above), and the cluster server's own log
    figures = {}
    for label, tracking_uri in (("cluster", uri),
                                ("local", f"sqlite:///{work / 'local-mlflow' / 'outputs' / 'mlflow' / 'mlflow.db'}")):
        text, owners, counts = _mlflow_records(mlflow.MlflowClient(tracking_uri=tracking_uri))
        scan.blob(f"MLflow records ({label})", text)
        assert counts["runs"] >= 8 and counts["params"] > 20 and counts["registered_models"] >= 1, (label, counts)
        assert owners.count(MLFLOW_USER) >= 8, (label, owners)  # the steps ran with the planted login
        figures[label] = counts
    objects = 0
    s3 = storage.client()
    for obj in s3.list_objects(bucket, recursive=True):
        if obj.object_name.startswith("secrets-test/") or obj.is_dir:
            continue  # the data the runs read
        response = s3.get_object(bucket, obj.object_name)
        try:
            scan.blob(f"s3://{bucket}/{obj.object_name}", response.read())
        finally:
            response.close()
            response.release_conn()
        objects += 1
    assert objects >= 10  # the model, patches, tables, results.json, report.html
    server_logs = list(tmp_path_factory.getbasetemp().glob("manifest-mlflow*/server.log"))  # the fixture's
    assert server_logs
    for log in server_logs:
        scan.blob(str(log), log.read_bytes())

    with capsys.disabled():
        print(f"\nsecrets scan: {scan.files} files ({scan.file_bytes:,} bytes), {objects} S3 objects, "
              f"{len(printed)} commands' output, {len(kfp_api.requests)} KFP requests; {scan.blobs} blobs, "
              f"{scan.bytes:,} bytes in all ({scan.members} archive members); MLflow: "
              + "; ".join(f"{k}: {c['runs']} runs, {c['params']} params, {c['tags']} tags, "
                          f"{c['registered_models']} registered models, {c['model_versions']} versions, "
                          f"{c['logged_models']} logged models" for k, c in figures.items())
              + f"; {sum(len(f) for f in PATTERNS.values())} patterns, {len(scan.hits)} hits")
    assert not scan.hits, "\n".join(scan.hits)
