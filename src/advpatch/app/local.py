"""Run a pipeline on this machine through ``kfp.local`` (no cluster, no container).

Every task runs as a subprocess of the current Python (``SubprocessRunner(use_venv=False)``), so
the environment that has advpatch installed is the one the components use.

Runs started at once from one folder (two terminals, a sweep by hand, a CI matrix) each get a
folder of their own and share the MLflow store:

* a run's output folder (``outputs/run`` by default) is its own while it runs, held by a lock
  (:func:`claim_output`); a second run finds it taken and uses ``outputs/run-2``, and so on;
* the run's task artifacts go under that folder (``kfp/``), emptied when the run starts, so the
  run finds its KFP run folder there by where it put it, never by comparing listings;
* the runs share one MLflow server over the store (:func:`advpatch.app.tracking_server.shared_server`),
  and each has its own parent run in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Tuple

from advpatch import params, settings
from advpatch.errors import ERROR_PREFIX, InputError

log = logging.getLogger(__name__)


class PipelineFailed(RuntimeError):
    """A local pipeline run failed; the message carries the end of its log."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
_ENDED = re.compile(r"Task '(?P<task>[^']+)' (?:finished with status (?P<status>\w+)|cache hit)")


def task_plan(pipeline, arguments: Mapping[str, Any]) -> Tuple[Dict[str, str], int]:
    """A compiled pipeline's tasks: task name -> display name, and how many tasks a run executes
    (a ParallelFor's body once per item, where its items are known before the run)."""
    spec = pipeline.pipeline_spec
    names: Dict[str, str] = {}
    defaults = {k: v.default_value for k, v in spec.root.input_definitions.parameters.items()}

    def walk(dag, times: int) -> int:
        from google.protobuf.json_format import MessageToDict

        count = 0
        for key, task in dag.tasks.items():
            component = spec.components[task.component_ref.name]
            if component.WhichOneof("implementation") == "dag":
                items = 1
                if task.HasField("parameter_iterator"):
                    source = task.parameter_iterator.items
                    if source.HasField("raw"):
                        items = len(json.loads(source.raw))
                    else:
                        name = source.input_parameter.replace("pipelinechannel--", "")
                        value = arguments.get(name, MessageToDict(defaults[name]) if name in defaults else [None])
                        items = len(value) if isinstance(value, list) else 1
                count += walk(component.dag, times * items)
            else:
                names[key] = task.task_info.name or key
                count += times
        return count

    total = walk(spec.root.dag, 1)
    return names, total


class Progress(logging.Filter):
    """Watches the local runner's log records (a filter on the root logger sees them all, whatever
    handlers the runner installs per task) and writes one line per task start and end, with its
    time and the run's progress, to ``write``."""

    def __init__(self, names: Dict[str, str], total: int, write) -> None:
        super().__init__()
        self.names, self.total, self.write = names, total, write
        self.started_at = time.monotonic()
        self.running: Dict[str, List[float]] = {}
        self.done = 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", str(record.msg))
        with self.lock:
            if m := _STARTED.search(text):
                self.running.setdefault(m["task"], []).append(time.monotonic())
                self._line(" ", m["task"], "")
            elif m := _ENDED.search(text):
                starts = self.running.get(m["task"]) or [time.monotonic()]
                seconds = time.monotonic() - starts.pop(0)
                self.done += 1
                status = m["status"] or "CACHED"
                mark = {"SUCCESS": "ok", "CACHED": "ok"}.get(status, "!!")
                self._line(mark, m["task"], f"{seconds:5.1f} s" + ("" if status == "SUCCESS" else f"  {status}"))
        return True

    def _line(self, mark: str, task: str, tail: str) -> None:
        elapsed = time.monotonic() - self.started_at
        count = f"{self.done:>2}/{self.total}" if mark != " " else " " * (len(str(self.total)) * 2 + 1)
        name = self.names.get(task, task)
        start = "start" if mark == " " else mark
        self.write(f"[{count}] {start:<5} {name:<52.52} {tail:>9}  {int(elapsed) // 60}:{int(elapsed) % 60:02d}\n")


@contextlib.contextmanager
def _progress(pipeline, arguments: Mapping[str, Any], write) -> Iterator[None]:
    if write is None:
        yield
        return
    names, total = task_plan(pipeline, arguments)
    watcher = Progress(names, total, write)
    root = logging.getLogger()
    root.addFilter(watcher)
    try:
        yield
    finally:
        root.removeFilter(watcher)


@contextlib.contextmanager
def _output_to(log_file: Optional[Path]) -> Iterator[None]:
    """Send this process's stdout/stderr (and so every task's) to ``log_file``."""
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _kfp_leaves_no_trace() -> Iterator[None]:
    """Put back ``print`` and the root logger's handlers as they were: the local runner swaps both
    for each task, and tasks of a ParallelFor, in threads, can put them back out of order."""
    import builtins

    root = logging.getLogger()
    saved = builtins.print, root.level, root.handlers[:]
    try:
        yield
    finally:
        builtins.print = saved[0]
        root.setLevel(saved[1])
        root.handlers[:] = saved[2]


def _failure(status: str, log_file: Path) -> str:
    """What a failed run tells its user, ending with the reason, never a traceback: a task that
    failed on bad input ends its log with one ``advpatch: error:`` line (see
    ``advpatch.components._shell.fail_task``), and that line comes last; anything else (a bug) shows the
    end of the log and then the run's status."""
    lines = [_ANSI.sub("", line) for line in log_file.read_text(errors="replace").splitlines()]
    status = _ANSI.sub("", status)
    errors = [line.strip() for line in lines if line.strip().startswith(ERROR_PREFIX)]
    if errors:
        return f"{status} (tracebacks and every task's output: {log_file})\n{errors[-1]}"
    tail = "\n".join(lines[-60:])
    return f"--- end of {log_file} ---\n{tail}\n--- {status}"


REPORT_RESULTS = Path("report") / "results"
"""Where, in a local run's folder, the report task's results.json is (the local runner keeps each
task's outputs under ``<run folder>/<task name>/<output name>``). The pipelines return nothing: KFP
lets no output leave the exit handler that closes their MLflow run."""


def run_local(
    pipeline, arguments: Mapping[str, Any], pipeline_root: Path, log_file: Optional[Path] = None, progress=None
) -> Dict[str, Any]:
    """Run ``pipeline`` with ``arguments``, its task outputs under ``pipeline_root``, which must hold
    no other run (this run's folder is found there as its only one); return its ``results.json`` as
    a dict (with the run's folder as ``run_folder``).

    With ``log_file``, the tasks' (verbose) output goes there instead of the terminal and a
    failure raises :class:`PipelineFailed` with the end of that log. With ``progress`` (a
    function taking a line, e.g. ``sys.stderr.write``, bound before the output moves), each task's
    start and end is reported there.
    """
    from kfp import local

    pipeline_root.mkdir(parents=True, exist_ok=True)
    if any(pipeline_root.iterdir()):
        raise ValueError(f"{pipeline_root} must be empty: a run finds its folder there as the only one")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    try:
        with _progress(pipeline, arguments, progress), _output_to(log_file), _kfp_leaves_no_trace():
            pipeline(**arguments)
    except RuntimeError as e:
        if log_file is None:
            raise
        raise PipelineFailed(_failure(str(e), log_file)) from None
    (run_folder,) = pipeline_root.iterdir()
    results_path = run_folder / REPORT_RESULTS
    log.info("results: %s", results_path)
    results = json.loads(results_path.read_text())
    results["run_folder"] = str(run_folder)
    return results


LOCK_FILE = ".advpatch-run.lock"
TASK_OUTPUTS = "kfp"
"""In a run's output folder: the lock that makes it the run's own, and the tasks' artifacts."""
MAX_FOLDERS = 100


def claim_output(output: Optional[Path], default: Path) -> Tuple[Path, IO]:
    """An output folder no other run is using, and the open lock file that keeps it so until closed
    (or this process ends): ``output`` when given (an error if another run holds it), else
    ``default`` or, while another run holds that, ``default-2``, ``default-3``, ..."""
    candidates = [output] if output else [default, *(default.with_name(f"{default.name}-{i}")
                                                     for i in range(2, MAX_FOLDERS + 1))]
    for folder in candidates:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "w")  # noqa: SIM115 (held open by the caller: the lock lasts as long)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return folder, lock
    if output:
        raise InputError(f"--output {output} is in use by another advpatch run: give another folder")
    raise InputError(f"{default} and {MAX_FOLDERS - 1} more folders beside it are in use by other advpatch runs")


def run_pipeline(pipeline_name: str, arguments: Dict[str, Any], output: Optional[Path], default_name: str = "run",
                 write=None, eval_shards: int = 1) -> Dict[str, Any]:
    """Run a pipeline locally; write ``results.json``, ``report.html``, ``pipeline.log`` and the
    tasks' artifacts (``kfp/``) to ``output`` (default: ``$ADVPATCH_OUTPUT_DIR/<default_name>``, or
    the next free folder beside it: :func:`claim_output`). Progress lines go to ``write``.
    ``eval_shards``: the pipeline built with its evaluation in that many shards."""
    from advpatch.app.tracking_server import shared_server
    from advpatch.app.warm import warm_starter
    from advpatch.tracking.faults import ENV_OWN_SERVER, ENV_OWN_SERVER_LOG, ENV_OWN_SERVER_PID

    params.validate_pipeline(pipeline_name, arguments)  # fail in milliseconds, not inside a task
    base = settings.output_dir()
    claimed, lock = claim_output(output.resolve() if output else None, base / default_name)
    if output is None and claimed != base / default_name:
        print(f"note: {base / default_name} is in use by another advpatch run: this one writes to {claimed}")
    output = claimed
    with lock:
        log_file = output / "pipeline.log"
        log_file.unlink(missing_ok=True)
        shutil.rmtree(output / TASK_OUTPUTS, ignore_errors=True)  # the last run's, in this folder
        settings.no_telemetry()
        settings.quiet_tensorflow()
        started = time.monotonic()
        print(f"running pipeline {pipeline_name} locally (task logs: {log_file})", flush=True)
        # what the task subprocesses read: the output folder, absolute, the MLflow store in it, and the
        # run they belong to (on a cluster, the pod's labels give the last two; see pipelines/common.py)
        run_id = uuid.uuid4().hex
        task_env = {settings.ENV_OUTPUT_DIR: str(base),
                    settings.ENV_PIPELINE_RUN_ID: run_id,
                    settings.ENV_PIPELINE_RUN_NAME: f"{pipeline_name}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:6]}"}
        with contextlib.ExitStack() as stack:
            progress = write if write is not None else stack.enter_context(_terminal()).write
            if os.environ.get(settings.ENV_TRACKING_URI):
                tracking_env = {settings.ENV_TRACKING_URI: os.environ[settings.ENV_TRACKING_URI]}
            else:  # the store's MLflow server, shared with the other runs using it
                server = stack.enter_context(shared_server(base / "mlflow"))
                tracking_env = {settings.ENV_TRACKING_URI: server["uri"], ENV_OWN_SERVER: server["uri"],
                                ENV_OWN_SERVER_PID: server["pid"], ENV_OWN_SERVER_LOG: server["log"]}
            warm_env = stack.enter_context(warm_starter(output / "warm.log"))
            stack.enter_context(_environment({**task_env, **tracking_env, **warm_env}))
            from advpatch.pipelines import build  # imports KFP: while the tracking server starts

            results = run_local(build(pipeline_name, eval_shards=eval_shards), arguments, output / TASK_OUTPUTS,
                                log_file=log_file, progress=progress)
        results["wall_time_s"] = round(time.monotonic() - started, 1)
        page = Path(results.pop("run_folder")) / "report" / "html"
        if page.is_file():
            shutil.copyfile(page, output / "report.html")
        (output / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
        results["output"] = str(output)
        return results


@contextlib.contextmanager
def _terminal() -> Iterator[Any]:
    """Where progress lines go while the tasks' output goes to the log: the terminal, through a
    copy of stdout's file descriptor (``sys.stdout`` itself when it has none, e.g. under pytest)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        yield sys.stdout
        return
    with os.fdopen(os.dup(fd), "w", buffering=1) as terminal:
        yield terminal


@contextlib.contextmanager
def _environment(values: Dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a run, then put back what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
