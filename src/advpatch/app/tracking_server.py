"""An ``mlflow server`` on 127.0.0.1 for the length of a local run.

A local run's tasks are separate processes; each one opening the SQLite store itself pays for
MLflow's SQLAlchemy store (its import and schema check: 1.5-2 s a task). Through one server they
talk plain HTTP. The server writes the same store (``outputs/mlflow/mlflow.db``, artifacts beside
it), so ``make mlflow-ui`` shows the runs as before.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from advpatch.errors import AdvpatchError


class ServerError(AdvpatchError):
    """The tracking server did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(backend_uri: str, port: int, artifacts: Sequence[str]) -> List[str]:
    """``mlflow server`` on 127.0.0.1:``port`` over ``backend_uri``, one worker; ``artifacts``: its
    artifact options (``--default-artifact-root URI``, or ``--serve-artifacts
    --artifacts-destination URI``)."""
    # this Python's mlflow, whether or not its console script is on PATH or beside the interpreter
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_uri, *artifacts]


def server_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true", **(extra or {})}


def wait_healthy(uri: str, proc: subprocess.Popen, log_path: Path, timeout: float = 90) -> None:
    """Wait until ``uri/health`` answers 200; :class:`ServerError` with the log's end if the
    process dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.is_file() else ""
            raise ServerError(f"mlflow server did not start (log {log_path}):\n{tail}")
        time.sleep(0.25)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_server(store: Path, log_path: Path, wait: bool = True) -> Iterator[str]:
    """A server over the local store in ``store`` (``mlflow.db`` and ``artifacts/``); yields its URI
    once it answers (``wait=False``: at once, while it starts; a step waits for it in
    :func:`advpatch.tracking.configure`). Artifacts go straight to the folder (no proxy), as with
    the store itself."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "artifacts").mkdir(exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = server_command(f"sqlite:///{store / 'mlflow.db'}", port,
                             ["--default-artifact-root", (store / "artifacts").resolve().as_uri()])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env(),
                                start_new_session=True)
    try:
        if wait:
            wait_healthy(uri, proc, log_path)
        yield uri
    finally:
        stop(proc)
