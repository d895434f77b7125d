"""An ``mlflow server`` on 127.0.0.1 over a local store, for as long as local runs use it.

A local run's tasks are separate processes; each one opening the SQLite store itself pays for
MLflow's SQLAlchemy store (its import and schema check: 1.5-2 s a task). Through one server they
talk plain HTTP. The server writes the same store (``outputs/mlflow/mlflow.db``, artifacts beside
it), so ``make mlflow-ui`` shows the runs as before.

Runs started at once from one folder share the store, so they share its server
(:func:`shared_server`): two servers on one SQLite file would race to migrate it and lock each
other out. The first run starts it and records it in ``server.json`` beside the database; the others
find it there; each run registers in ``server-users/`` and the last one out stops it. A file lock
(``server.lock``) orders these steps between processes; a run that was killed leaves a record whose
process is gone, which counts for nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from advpatch.errors import ServerError
from advpatch.tracking.faults import process_running


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


def store_command(store: Path, port: int) -> List[str]:
    """``mlflow server`` over the local store in ``store`` (made if missing): ``mlflow.db``, and
    ``artifacts/``, written straight to the folder (no proxy), as with the store itself."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "artifacts").mkdir(exist_ok=True)
    return server_command(f"sqlite:///{store / 'mlflow.db'}", port,
                          ["--default-artifact-root", (store / "artifacts").resolve().as_uri()])


@contextlib.contextmanager
def local_server(store: Path, log_path: Path, wait: bool = True) -> Iterator[str]:
    """A server of its own over the local store in ``store`` (:func:`store_command`); yields its URI
    once it answers (``wait=False``: at once, while it starts)."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(store_command(store, port), stdout=log, stderr=subprocess.STDOUT, env=server_env(),
                                start_new_session=True)
    try:
        if wait:
            wait_healthy(uri, proc, log_path)
        yield uri
    finally:
        stop(proc)


STATE, LOCK, USERS, LOG = "server.json", "server.lock", "server-users", "server.log"
"""Files beside the store's database: the running server (URI, process), the lock that orders
starting, joining and stopping it, one file per run using it, and its log."""
_STARTED: Dict[int, subprocess.Popen] = {}
"""Servers this process started, so that it reaps the one it stops."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _raw_record(store: Path) -> Dict[str, str]:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((store / STATE).read_text())
        if isinstance(record, dict):
            return record
    return {}


def _recorded(store: Path) -> Optional[Dict[str, str]]:
    """The server ``server.json`` records, if its process still runs (and, where ``/proc`` tells,
    is still that server: a process id can be reused)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        server = _raw_record(store)
        pid = int(server["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline")
        if process_running(pid) and (not cmdline.parent.is_dir() or str(store / "mlflow.db") in cmdline.read_text()):
            return server
    return None


def _users(store: Path) -> List[Path]:
    """The runs that use the store's server; records of runs whose process is gone are removed."""
    live = []
    for path in sorted((store / USERS).glob("*")):
        if process_running(int(path.name.split("-")[0])):
            live.append(path)
        else:
            path.unlink(missing_ok=True)
    return live


def _start(store: Path) -> Dict[str, str]:
    port = free_port()
    with open(store / LOG, "ab") as log:
        proc = subprocess.Popen(store_command(store, port), stdout=log, stderr=subprocess.STDOUT, env=server_env(),
                                start_new_session=True)
    _STARTED[proc.pid] = proc
    server = {"uri": f"http://127.0.0.1:{port}", "pid": str(proc.pid), "log": str(store / LOG)}
    (store / STATE).write_text(json.dumps(server))
    return server


def _stop(store: Path, server: Dict[str, str]) -> None:
    pid = int(server["pid"])
    proc = _STARTED.pop(pid, None)
    if proc is not None:
        stop(proc)
    else:  # started by a run that has ended: its whole process group (uvicorn's workers too)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while process_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            if process_running(pid):
                os.killpg(pid, signal.SIGKILL)
    (store / STATE).unlink(missing_ok=True)


@contextlib.contextmanager
def shared_server(store: Path) -> Iterator[Dict[str, str]]:
    """The server over the local store in ``store`` (``mlflow.db`` and ``artifacts/``), shared with
    every other run using the store: started if none runs, stopped when the last run using it ends.
    Yields ``{"uri", "pid", "log"}`` at once, while a new server may still be starting (a step waits
    for it, and fails in seconds if its process exits: :func:`advpatch.tracking.faults.wait_if_local_server`).
    Artifacts go straight to the folder (no proxy), as with the store itself."""
    (store / USERS).mkdir(parents=True, exist_ok=True)
    me = store / USERS / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with _locked(store / LOCK):
        server = _recorded(store) or _start(store)
        me.write_text(server["uri"])
    try:
        yield server
    finally:
        with _locked(store / LOCK):
            me.unlink(missing_ok=True)
            if not _users(store) and _raw_record(store).get("pid") == server["pid"]:
                _stop(store, server)  # the last run out (the record goes with it, even for a server that died)
            for pid in [p for p, proc in _STARTED.items() if proc.poll() is not None]:
                del _STARTED[pid]  # reaped: a server this process started and another one stopped
