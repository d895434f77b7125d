"""When tracking goes wrong: an MLflow server that is down, failing or silent, and a task killed and re-run.

**Bounded requests.** MLflow's client retries a failed request by itself: by default 7 retries with
exponential backoff and 120 s to wait for each answer, minutes before a step learns that the
server is gone. Unless the user sets them, :func:`bound_requests` (called by
:func:`advpatch.tracking.configure`) sets :data:`HTTP_DEFAULTS`:

* ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``: 3 tries of each request;
* ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=2``, ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=1``: no wait before
  the second try, 4-5 s before the third (urllib3 waits ``factor * 2**(n - 1)`` after the n-th
  failure in a row, n >= 2);
* ``MLFLOW_HTTP_REQUEST_TIMEOUT=6``: seconds to connect, and to wait for each part of the answer;
* ``MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER=false``: a 503 with ``Retry-After: 600`` waits 4 s, not 600.

So a request fails within 3 x 6 + 4 + 1 = 23 s (a server that accepts and never answers), about
5 s on HTTP 5xx or a refused connection, at once on 401/403. For a server on 127.0.0.1 or
localhost (``advpatch run`` starts one beside the pipeline), a step first waits up to
:data:`LOCAL_SERVER_WAIT` s while nothing listens on its port. Every such failure becomes one
:class:`TrackingError` naming the URI (never its user or password), what failed and the tries.

**Shards that log one dataset at once.** MLflow's store records a dataset input by looking it up
and inserting it when absent, without a lock: two runs logging the same dataset at once (the
shards of a ParallelFor reading one test split) can both insert it, and the loser's request fails
on the unique key (HTTP 400). :func:`through_dataset_race` tries it again (the dataset is there
then); tests/test_mlflow.py races six steps on SQLite and on PostgreSQL.

**A task killed and re-run.** A KFP retry runs the task again with the same pipeline run id, task
name and inputs. Each run a step opens in advpatch's own parent-run mode carries
:data:`TAG_ATTEMPT`, a digest of the pipeline run, task, step, run name and logged parameters; the
new attempt deletes the earlier attempts' runs (:func:`retire_earlier_attempts`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from advpatch.errors import TrackingError, TrackingInputError

if TYPE_CHECKING:
    from mlflow import MlflowClient

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "6",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
}
LOCAL_SERVER_WAIT = 20.0
"""Seconds a step waits for a server on 127.0.0.1/localhost to start listening (an ``mlflow
server`` on a fresh store takes 10-15 s on a busy 2-core machine)."""
OWN_SERVER_WAIT = 90.0
"""The same for the server ``advpatch run`` started beside this very run (it names it in
:data:`ENV_OWN_SERVER`): on a loaded machine its start can take longer, and it is known to be coming."""
ENV_OWN_SERVER = "ADVPATCH_OWN_TRACKING_SERVER"
ENV_OWN_SERVER_PID, ENV_OWN_SERVER_LOG = "ADVPATCH_OWN_TRACKING_SERVER_PID", "ADVPATCH_OWN_TRACKING_SERVER_LOG"
"""That server's process and log: a step stops waiting the moment the process is gone."""
TAG_ATTEMPT = "advpatch.attempt"
TAG_REPLACES = "advpatch.replaces"



def bound_requests() -> None:
    """Set :data:`HTTP_DEFAULTS` where the environment does not say otherwise."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _tries() -> int:
    return int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])) + 1


def shown_uri(uri: str) -> str:
    """``uri`` without its user and password."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


URI_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
"""The tracking URI schemes MLflow's client knows (a database scheme may name its driver:
``postgresql+psycopg``)."""


def check_uri(uri: str) -> None:
    """A :class:`TrackingInputError` unless ``uri`` has a form MLflow takes: checked before a local run's
    first task, so that a typo costs nothing (whether the server answers, each step checks)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    ok = scheme in URI_SCHEMES and not (scheme in ("http", "https") and not parts.hostname) \
        and not (scheme == "sqlite" and not uri.startswith("sqlite:///"))
    if not ok and not (not parts.scheme and uri.strip()):  # no scheme: a folder, MLflow's file store
        raise TrackingInputError(f"MLFLOW_TRACKING_URI must be http(s)://HOST[:PORT], sqlite:///PATH, a database URI "
                            f"(postgresql://...) or a folder, got {shown_uri(uri)!r}")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:  # anything but a refusal (a full backlog, a filter): not "still starting"
        return True


def _healthy(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_if_local_server(uri: str) -> None:
    """For a server on 127.0.0.1 or localhost (the one ``advpatch run`` starts may be starting),
    wait while nothing listens on its port (:data:`LOCAL_SERVER_WAIT`): anything listening ends the
    wait, whatever it answers (the bounded requests judge that). advpatch run's own server is waited
    for until its ``/health`` answers, for :data:`OWN_SERVER_WAIT`."""
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
        return
    own = os.environ.get(ENV_OWN_SERVER) == uri  # ours is waited for until it answers, not only listens
    timeout = OWN_SERVER_WAIT if own else LOCAL_SERVER_WAIT
    deadline, probes = time.monotonic() + timeout, 1
    pid = int(os.environ.get(ENV_OWN_SERVER_PID) or 0) if own else 0
    while not (_healthy(uri) if own else _listening(parts.hostname, parts.port or 80)):
        if pid and not process_running(pid):
            log = os.environ.get(ENV_OWN_SERVER_LOG, "")
            lines = [line for line in _tail(log) if line.strip()]
            tail = [line for line in lines if "Error" in line][-1:] or lines[-1:]  # the exception's line
            raise TrackingError(f"the MLflow server advpatch started for this store (process {pid}) exited before "
                                f"answering; its log: {log}" + (f" ({tail[0].strip()[:300]})" if tail else ""))
        if time.monotonic() > deadline:
            what = "no answer on /health" if own else "connection refused"
            raise TrackingError(f"MLflow tracking at {shown_uri(uri)} failed: {what} "
                                f"({probes} tries over {timeout:.0f} s); is the server running?")
        time.sleep(0.25)
        probes += 1


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _tail(path: str) -> List[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-4000:].splitlines()
    except OSError:
        return []


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes and contexts, and what urllib3 and requests wrap in their arguments."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                 if isinstance(x, BaseException)]


def _failure(error: BaseException) -> Optional[Tuple[str, int]]:
    """What failed and after how many tries, when ``error`` is the tracking server's failure."""
    import requests
    import urllib3.exceptions as u3
    from mlflow.exceptions import MlflowException, RestException

    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    chain = list(_chain(error))
    for e in chain:  # the transport's failure, after the tries
        if isinstance(e, (ConnectionRefusedError, u3.NewConnectionError)):  # (a ConnectTimeoutError to urllib3)
            return "connection refused", _tries()
        if isinstance(e, (u3.ConnectTimeoutError, requests.ConnectTimeout)):
            return f"no connection within {timeout} s", _tries()
        if isinstance(e, (u3.ReadTimeoutError, requests.ReadTimeout)):
            return f"no answer within {timeout} s", _tries()
        if isinstance(e, u3.ResponseError):  # "too many 503 error responses"
            code = next((w for w in str(e).split() if w.isdigit()), "5xx")
            return f"HTTP {code} on every try", _tries()
    for e in chain:  # an answer MLflow does not retry
        answered = isinstance(e, MlflowException) and (
            isinstance(e, RestException) or "failed with error code" in e.message)
        # MLflow leaves get_http_status_code unannotated (it returns an int)
        status: int = e.get_http_status_code() if isinstance(e, MlflowException) and answered else 0  # type: ignore[no-untyped-call]
        if status in (401, 403):
            return f"HTTP {status}, not allowed (check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)", 1
        if status >= 500:
            return f"HTTP {status}", 1
    connection = next((e for e in chain if isinstance(e, (requests.ConnectionError, u3.ProtocolError))), None)
    return (f"connection failed ({type(connection).__name__})", _tries()) if connection else None


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn the tracking server's failure to serve a request into one :class:`TrackingError` (its
    traceback dropped: MLflow's messages spell out URLs that may hold a password); any other
    error passes unchanged. Also a decorator."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        found = _failure(error)
        if found is None:
            raise
        import mlflow

        what, tries = found
        raise TrackingError(f"MLflow tracking at {shown_uri(mlflow.get_tracking_uri())} failed: {what} "
                            f"({tries} {'try' if tries == 1 else 'tries'})") from None


INPUT_TRIES = 4
"""Tries of logging a dataset input (see :func:`_lost_dataset_race`)."""


def lost_dataset_race(error: BaseException) -> bool:
    """Whether ``error`` is MLflow's answer to a run that lost the race to record a dataset: its
    store looks the dataset (name, digest) up and inserts it when absent, in one transaction but
    without a lock, so two runs logging the same dataset at once (the shards of a ParallelFor
    reading one test split) can both insert it, and the second insert fails on the unique key
    (MLflow answers 400 with the database's message). Tried again, the dataset is there and is
    used."""
    from mlflow.exceptions import MlflowException

    text = str(error.message if isinstance(error, MlflowException) else error)
    return isinstance(error, MlflowException) and any(
        key in text for key in ("UNIQUE constraint failed: datasets", "IntegrityError", "duplicate key value",
                                "Duplicate entry"))


def through_dataset_race(log: Callable[[], Any]) -> None:
    """Call ``log`` (logging a dataset input), again while it loses :func:`lost_dataset_race`, up
    to :data:`INPUT_TRIES` times."""
    for attempt in range(INPUT_TRIES):
        try:
            log()
            return
        except Exception as error:
            if attempt == INPUT_TRIES - 1 or not lost_dataset_race(error):
                raise
            time.sleep(0.2 * (attempt + 1))


def attempt_key(pipeline_run_id: str, task: str, step: str, run_name: str, params: Mapping[str, Any]) -> str:
    """What an attempt's run and every retry's run of it share: ``params`` holds the logged
    parameters and the task's artifact paths, which tell a ParallelFor's iterations apart (they
    share the task's name and may share every parameter; each reads other artifacts, and a retry
    the same ones)."""
    text = json.dumps([pipeline_run_id, task, step, run_name, {k: str(v) for k, v in params.items()}], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def retire_earlier_attempts(client: MlflowClient, experiment_id: str, key: str) -> Dict[str, str]:
    """Delete the runs of earlier attempts of the run ``key`` names; returns the tags of this
    attempt's run (the key, and the ids of the runs it replaces).

    Deleted rather than resumed: a killed attempt's run holds part of the params, metrics (a
    resumed history would log its epochs twice) and artifacts; the retry starts over and logs all
    of them again, so its run alone says what the task produced. A FINISHED earlier run (the task
    failed after this run closed, e.g. in a later part) is superseded too: the retry redoes the
    whole task. Deleted runs stay in MLflow's trash (restorable) until ``mlflow gc``."""
    from mlflow.entities import ViewType

    earlier = client.search_runs([experiment_id], f"tags.`{TAG_ATTEMPT}` = '{key}'",
                                 run_view_type=ViewType.ACTIVE_ONLY, max_results=100)
    for run in earlier:
        client.delete_run(run.info.run_id)
    replaced = ",".join(r.info.run_id for r in earlier)
    return {TAG_ATTEMPT: key, **({TAG_REPLACES: replaced} if replaced else {})}
