"""Warm task starts for local runs: a process that has imported TensorFlow, Keras and MLflow once
forks a child for each task's step, so a task does not spend 4-7 s importing them again.

kfp.local starts every task as a new Python process; a task of the demo pipeline spent most of its
time importing (``make bench`` measures it). ``advpatch run`` / ``advpatch demo`` start one
*warm* process beside the pipeline (:func:`warm_starter`); each task's component shell, finding
``ADVPATCH_WARM_SOCKET`` in its environment, hands its step call to it (:func:`run_in_warm_child`)
instead of running the step itself: the warm process forks, the child takes the task's
environment, working directory, stdout and stderr (their file descriptors pass over the socket),
runs the step and sends back its result; the task's own process then writes KFP's outputs as
always. The parent never runs a TensorFlow op (forking after that is unsafe), only imports.

The same pipeline compiled for a cluster, or run through ``kfp.local`` directly, runs its steps in
the task process: a test checks that both ways produce the same bytes. Only the local CLI uses
this, on Linux; a task that finds no warm process (or a dead one) runs its step itself. The warm
process forks only while it runs one thread (an import that starts one would make forking
unsafe: it then stops serving). The task's side, and the protocol, are in
:mod:`advpatch.components._warm`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Dict, Iterator

from advpatch.components._warm import ACCEPTED, ENV_WARM_SOCKET, _receive, _send, error_reply

PRELOAD = ("tensorflow", "keras", "mlflow", "mlflow.keras", "matplotlib.pyplot", "PIL.Image",
           "advpatch.steps", "advpatch.models.training", "advpatch.models.classifier", "advpatch.patches",
           "advpatch.defences.preprocessing",
           "advpatch.report", "advpatch.report.charts", "advpatch.report.html", "advpatch.tracking",
           "advpatch.tracking.registry", "advpatch.models")
"""What the warm process imports (and nothing it runs but :func:`advpatch.patches.paste.warm`: NumPy and the
compiled loops, on its one thread)."""


# ------------------------------------------------------------------ the warm process


def serve(path: str) -> None:
    """Import :data:`PRELOAD`, then serve step calls on the UNIX socket ``path`` until terminated."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import importlib

    from advpatch import settings

    settings.no_telemetry()
    settings.quiet_tensorflow()
    settings.skip_keras_extras()
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children (each resets it)
    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    server.listen(16)
    os.replace(path + ".tmp", path)  # the socket appears only once the imports are done
    from advpatch.patches.paste import warm

    warm()  # the compiled loops loaded (or compiled) once, not in every task; a task asking meanwhile waits
    server.settimeout(1.0)
    while os.getppid() == parent:  # a CLI killed without its clean-up: end too, within a second
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if threading.active_count() > 1:  # an import started a thread: forking now could copy a held lock
            print(f"advpatch warm process: {threading.active_count()} threads, no fork; tasks run their steps "
                  "themselves", file=sys.stderr, flush=True)
            conn.close()
            return
        try:
            pid = os.fork()
        except OSError:  # no child, no "accepted": the task runs its step itself
            conn.close()
            continue
        if pid == 0:
            server.close()
            _child(conn)  # never returns
        conn.close()


def _child(conn: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the step's own subprocesses report their exit codes
    code = 0
    try:
        conn.sendall(ACCEPTED)
        request, fds = _receive(conn)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]  # what MLflow names a run's source after
        os.chdir(request["cwd"])
        from advpatch.steps import STEPS
        from advpatch.tracking import RunContext

        try:
            result = STEPS[request["step"]](**request["kwargs"], ctx=RunContext(**request["ctx"]))
            reply = {"ok": True, "result": result.to_json()}
        except BaseException as e:
            traceback.print_exc()
            reply = error_reply(e)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, reply)
    except BaseException:
        traceback.print_exc()
        code = 2
    finally:
        os._exit(code)


# ------------------------------------------------------------------ the CLI's side


@contextlib.contextmanager
def warm_starter(log_path: Path) -> Iterator[Dict[str, str]]:
    """Start the warm process for the length of a local run; yields the environment that points
    the tasks at it. Tasks that start before it has finished importing run their steps
    themselves."""
    if not sys.platform.startswith("linux"):  # fork() after heavy imports is safe only where it is tested
        yield {}
        return
    folder = tempfile.mkdtemp(prefix="advpatch-warm-")  # mode 0700: this user's tasks only
    path = os.path.join(folder, "steps.sock")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "advpatch.app.warm", path], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {ENV_WARM_SOCKET: path}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the warm process and any child still running
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for name in (path, path + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def wait_ready(env: Dict[str, str], timeout: float = 60) -> bool:
    """Whether the warm process is serving within ``timeout`` seconds (for tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(env[ENV_WARM_SOCKET]):
            return True
        time.sleep(0.1)
    return False


if __name__ == "__main__":
    serve(sys.argv[1])
