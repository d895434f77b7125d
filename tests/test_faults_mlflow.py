"""Tracking when things go wrong: an MLflow server that is down, failing, silent or refusing the
credentials fails a real step within 30 s with one clear line and no output left behind; a task
killed while its MLflow run is open and run again (a KFP retry) gives the same bytes and one run."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port

PASSWORD = "do-not-print-me-4711"

pytestmark = pytest.mark.server  # real HTTP servers that refuse, fail or stay silent, and a killed task


def _answering(status: int, extra_headers=()):
    """A server that answers every request with ``status``; yields (uri, requests seen)."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.path)
            body = b"no"
            self.send_response(status)
            for k, v in extra_headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}", seen


@pytest.fixture
def fault(request):
    """The faulty 'server' the case names: (host:port, requests it answered or None, what the
    error must say)."""
    kind = request.param
    if kind in ("refused", "refused-local"):  # 127.0.0.2: not a local server advpatch waits for
        yield f"{'127.0.0.2' if kind == 'refused' else '127.0.0.1'}:{free_port()}", None, "connection refused"
        return
    if kind == "silent":  # accepts connections (the kernel's backlog) and never answers
        sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        yield f"127.0.0.1:{sock.getsockname()[1]}", None, "no answer within 6 s (3 tries)"
        sock.close()
        return
    status = {"http-500": 500, "http-503": 503, "http-401": 401}[kind]
    server, where, seen = _answering(status, [("Retry-After", "600")] if status == 503 else
                                     [("WWW-Authenticate", 'Basic realm="mlflow"')] if status == 401 else [])
    yield where, seen, f"HTTP {status} on every try (3 tries)" if status >= 500 else "HTTP 401, not allowed"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("fault", ["refused", "refused-local", "http-500", "http-503", "silent", "http-401"],
                         indirect=True)
def test_a_broken_tracking_server_fails_a_step_within_30_s_with_one_clear_line(fault, outputs, tmp_path, monkeypatch):
    from advpatch import steps
    from advpatch.tracking import RunContext, TrackingError
    from advpatch.tracking.faults import HTTP_DEFAULTS

    where, seen, expected = fault
    for name in HTTP_DEFAULTS:  # unset: advpatch's defaults apply (and are undone after the test)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    if "401" in expected:  # the password in the environment, as a cluster's Secret puts it
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{where}")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "advpatch")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    else:  # the password in the URI
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://advpatch:{PASSWORD}@{where}")
    monkeypatch.setenv("ADVPATCH_PIPELINE_RUN_ID", "run-faults")
    dataset = tmp_path / "data"
    started = time.monotonic()
    with pytest.raises(TrackingError) as raised:
        steps.load_dataset(dataset=str(dataset), source="digits", split="test", max_examples=20,
                           ctx=RunContext.current("faults", "load-dataset"))
    elapsed = time.monotonic() - started
    print(f"\n{where}: {elapsed:.1f} s: {raised.value}")
    message = str(raised.value)
    assert elapsed < 30
    assert f"MLflow tracking at http://{where} failed: {expected}" in message
    assert PASSWORD not in message and "advpatch@" not in message and "\n" not in message
    error = raised.value  # and no chained traceback that spells out URLs
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    if seen is not None and "HTTP 5" in expected:
        assert len(seen) == 3  # the tries the message counts, as the server saw them
    assert not dataset.exists() and not list(tmp_path.glob(".data*"))  # nor a partial one beside it


def test_the_bounds_keep_every_fault_under_30_s():
    """The documented worst cases, from the defaults: a silent server (every try waits out the
    timeout, then the backoff) and nothing listening on a local server's port."""
    from advpatch.tracking.faults import HTTP_DEFAULTS, LOCAL_SERVER_WAIT

    retries, factor, jitter, timeout = (float(HTTP_DEFAULTS[f"MLFLOW_HTTP_REQUEST_{k}"])
                                        for k in ("MAX_RETRIES", "BACKOFF_FACTOR", "BACKOFF_JITTER", "TIMEOUT"))
    backoff = sum(factor * 2 ** (n - 1) + jitter for n in range(2, int(retries) + 1))  # urllib3: none after the 1st
    assert (retries + 1) * timeout + backoff + 1 < 30  # + 1: the local server probe
    assert LOCAL_SERVER_WAIT + 1 < 30
    assert HTTP_DEFAULTS["MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER"] == "false"


# --------------------------------------------------------------------------- a task killed and re-run
STEP = """import json, sys
from advpatch import steps
from advpatch.tracking import RunContext
name, task, kwargs = json.loads(sys.argv[1])
getattr(steps, name)(**kwargs, ctx=RunContext.current("retried", task))
"""


def _step(tmp_path, store, name, task, kwargs, pipeline_run="", kill_when_open=False):
    """Run ``steps.<name>`` in a Python of its own, as a KFP task (pipeline run ``pipeline_run``);
    with ``kill_when_open``, SIGKILL it as soon as it logs that its MLflow run is open."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "ADVPATCH_OUTPUT_DIR": str(tmp_path / "outputs"), "ADVPATCH_PIPELINE_RUN_ID": pipeline_run,
           "ADVPATCH_PIPELINE_RUN_NAME": pipeline_run}
    store.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", STEP, json.dumps([name, task, kwargs])], env=env,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if kill_when_open and " MLflow run " in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stderr.close()
    assert proc.wait(120) == (-signal.SIGKILL if kill_when_open else 0), "".join(lines[-30:])
    return "".join(lines)


def test_a_task_killed_with_its_run_open_and_run_again_gives_the_same_bytes_and_one_run(tmp_path):
    import mlflow
    from mlflow.entities import ViewType

    setup = tmp_path / "setup-store"
    data, model = str(tmp_path / "data"), str(tmp_path / "model")
    _step(tmp_path, setup, "load_dataset", "", {"dataset": data, "source": "digits", "split": "test",
                                                "max_examples": 60})
    _step(tmp_path, setup, "train", "", {"training_data": data, "model": model, "model_architecture": "le_net",
                                         "epochs": 1, "register_model": False})
    killed_store, reference_store = tmp_path / "killed-store", tmp_path / "reference-store"
    args = {"data": data, "model": model, "row": "retried"}
    predictions = tmp_path / "task" / "predictions"  # KFP hands the retry the same output path
    started = time.monotonic()
    log = _step(tmp_path, killed_store, "infer", "infer", {**args, "predictions": str(predictions)}, "run-7",
                kill_when_open=True)
    killed_run = log.split(" MLflow run ")[1].split()[0]
    _step(tmp_path, killed_store, "infer", "infer", {**args, "predictions": str(predictions)}, "run-7")
    retried = time.monotonic() - started
    reference = tmp_path / "reference" / "predictions"
    _step(tmp_path, reference_store, "infer", "infer", {**args, "predictions": str(reference)}, "run-8")
    print(f"\nkilled and re-run in {retried:.1f} s")
    assert predictions.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in predictions.parent.iterdir()) == ["predictions"]  # no partial file beside it

    client = mlflow.MlflowClient(f"sqlite:///{killed_store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("retried").experiment_id
    steps_runs = client.search_runs([experiment], "tags.`advpatch.kind` = 'step'", run_view_type=ViewType.ALL)
    active = [r for r in steps_runs if r.info.lifecycle_stage == "active"]
    assert len(active) == 1 and active[0].info.status == "FINISHED"
    assert active[0].data.tags["kfp.task_name"] == "infer"
    assert active[0].data.tags["advpatch.replaces"] == killed_run
    assert [r.info.run_id for r in steps_runs if r.info.lifecycle_stage == "deleted"] == [killed_run]
    reference_run = mlflow.MlflowClient(f"sqlite:///{reference_store / 'mlflow.db'}").search_runs(
        [client.get_experiment_by_name("retried").experiment_id], "tags.`advpatch.kind` = 'step'")[0]
    assert active[0].data.metrics.keys() == reference_run.data.metrics.keys()
    assert {k: v for k, v in active[0].data.metrics.items() if k != "duration_s"} == {
        k: v for k, v in reference_run.data.metrics.items() if k != "duration_s"}
    assert active[0].data.params == reference_run.data.params


def test_iterations_of_a_parallel_for_keep_their_runs(outputs, monkeypatch):
    """ParallelFor iterations share their task's name, and may share every parameter (mnist-sweep's
    JPEG task); their artifacts differ, so neither takes the other for an earlier attempt of itself,
    even while both are open (the iterations run at once). A retry reads the same artifacts."""
    import mlflow

    from advpatch.tracking import RunContext, step_run

    monkeypatch.setenv("ADVPATCH_PIPELINE_RUN_ID", "run-loop")
    ctx = RunContext.current("loop", "jpeg-compression")
    params = {"jpeg_compression_quality": 50}
    def iteration(data):
        with step_run("jpeg_compression", ctx, params, artifacts={"data": data}) as run:
            run.log_metrics({"m": 1.0})
            return run

    with step_run("jpeg_compression", ctx, params, artifacts={"data": "/iteration-0/data"}) as first:
        with ThreadPoolExecutor(1) as other:  # another process in a real run: MLflow's active run is per thread
            second = other.submit(iteration, "/iteration-1/data").result()
        first.log_metrics({"m": 0.0})  # would fail if the second iteration had deleted this run
    with step_run("jpeg_compression", ctx, params, artifacts={"data": "/iteration-0/data"}) as retry:
        pass
    client = mlflow.MlflowClient()
    assert client.get_run(first.run_id).info.lifecycle_stage == "deleted"  # the retry replaced it
    assert [client.get_run(r.run_id).info.lifecycle_stage for r in (second, retry)] == ["active", "active"]
