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
this; a task that finds no warm process (or a dead one) runs its step itself.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from advpatch.errors import AdvpatchError

ENV_WARM_SOCKET = "ADVPATCH_WARM_SOCKET"
ACCEPTED = b"+"  # a child's first byte: from here on the step is the child's to run
PRELOAD = ("tensorflow", "keras", "mlflow", "mlflow.keras", "matplotlib.pyplot", "PIL.Image",
           "advpatch.steps", "advpatch.training", "advpatch.classifier", "advpatch.patches", "advpatch.defences",
           "advpatch.report", "advpatch.report.charts", "advpatch.report.html", "advpatch.tracking",
           "advpatch.registry", "advpatch.models")
"""What the warm process imports (and nothing it runs)."""


class WarmError(RuntimeError):
    """A step run in a warm child failed; the message is the step's error, its traceback is in the
    task's log."""


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
    server.settimeout(1.0)
    while os.getppid() == parent:  # a CLI killed without its clean-up: end too, within a second
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
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
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the task
            traceback.print_exc()
            bad_input = isinstance(e, AdvpatchError)  # its message is the whole story; else the type helps
            reply = {"ok": False, "error": str(e) if bad_input else f"{type(e).__name__}: {e}", "bad_input": bad_input}
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, reply)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 2
    finally:
        os._exit(code)


# ------------------------------------------------------------------ the protocol: length-prefixed JSON


def _send(conn: socket.socket, data: Dict[str, Any], fds=()) -> None:
    body = json.dumps(data).encode()
    header = len(body).to_bytes(8, "big")
    if fds:
        conn.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        conn.sendall(header)
    conn.sendall(body)


def _receive(conn: socket.socket):
    header, fds, _, _ = socket.recv_fds(conn, 8, 4)
    size = int.from_bytes(header, "big")
    chunks, got = [], 0
    while got < size:
        chunk = conn.recv(min(1 << 20, size - got))
        if not chunk:
            raise ConnectionError("the warm process closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return json.loads(b"".join(chunks)), list(fds)


# ------------------------------------------------------------------ the task's side


def run_in_warm_child(step: str, kwargs: Dict[str, Any], ctx) -> Optional[Any]:
    """Run ``STEPS[step](**kwargs, ctx=ctx)`` in a child of the warm process; its result
    (a :class:`~advpatch.steps.StepResult`), or ``None`` when there is no warm process to ask."""
    path = os.environ.get(ENV_WARM_SOCKET)
    if not path or not os.path.exists(path):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    from dataclasses import asdict

    from advpatch.steps import StepResult

    with conn:
        try:
            accepted = conn.recv(1) == ACCEPTED
        except OSError:
            accepted = False
        if not accepted:  # the warm process could not fork: nothing ran, so run the step here
            return None
        print(f"advpatch: {step} runs in a warm child (imports done once; {ENV_WARM_SOCKET})", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, {"step": step, "kwargs": kwargs, "ctx": asdict(ctx), "env": dict(os.environ), "cwd": os.getcwd(),
                     "argv": sys.argv},
              fds=(sys.stdout.fileno(), sys.stderr.fileno()))
        try:
            reply, _ = _receive(conn)
        except (ConnectionError, ValueError) as e:
            raise WarmError(f"{step}: the warm child ended without a result ({e}); see the log above") from None
    if not reply["ok"]:
        raise (AdvpatchError if reply.get("bad_input") else WarmError)(reply["error"])
    return StepResult.from_json(reply["result"])


# ------------------------------------------------------------------ the CLI's side


@contextlib.contextmanager
def warm_starter(log_path: Path) -> Iterator[Dict[str, str]]:
    """Start the warm process for the length of a local run; yields the environment that points
    the tasks at it. Tasks that start before it has finished importing run their steps
    themselves."""
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
