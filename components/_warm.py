"""The task's side of the warm process (:mod:`advpatch.app.warm` is the process itself): hand a step
to a child of a process that has the heavy imports done, over a UNIX socket, and take its result
back. Only ``advpatch run`` starts a warm process and points its tasks at it (``ADVPATCH_WARM_SOCKET``);
nothing of this runs on a cluster, where that variable is never set.

The protocol: the warm process forks a child per connection; the child's first byte, ``+``,
says it accepted the step (before it, nothing ran and the task may run the step itself); then
length-prefixed JSON each way, the task's stdout and stderr passed along as file descriptors. A
step's failure comes back with its type: an :class:`~advpatch.errors.AdvpatchError` is raised again
in the task as the same class, anything else as :class:`WarmError`.
"""

from __future__ import annotations

import array
import importlib
import json
import os
import socket
import sys
from typing import Any, Dict, Optional

from advpatch.errors import AdvpatchError

ENV_WARM_SOCKET = "ADVPATCH_WARM_SOCKET"
ACCEPTED = b"+"  # a child's first byte: from here on the step is the child's to run


class WarmError(RuntimeError):
    """A step run in a warm child failed on something else than bad input or a service; the message
    is the step's error, its traceback is in the task's log."""


def error_reply(error: BaseException) -> Dict[str, Any]:
    """What a child sends back when its step raised ``error``."""
    kind = type(error)
    return {"ok": False, "error": str(error) if isinstance(error, AdvpatchError) else f"{kind.__name__}: {error}",
            "type": f"{kind.__module__}:{kind.__qualname__}"}


def raise_reply(step: str, reply: Dict[str, Any]) -> None:
    """Raise, in the task, the error a child's ``reply`` carries: an :class:`AdvpatchError` as its own
    class (the CLI and the task's last line tell bad input from a failed service by it)."""
    module, _, name = str(reply.get("type", "")).partition(":")
    cls: Any = WarmError
    if module.startswith("advpatch."):
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            found = None
        if isinstance(found, type) and issubclass(found, AdvpatchError):
            cls = found
    raise cls(reply["error"])


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

    from advpatch.results import StepResult

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
        raise_reply(step, reply)
    return StepResult.from_json(reply["result"])


