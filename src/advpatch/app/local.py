"""Run a pipeline on this machine through ``kfp.local`` (no cluster, no container).

Every task runs as a subprocess of the current Python (``SubprocessRunner(use_venv=False)``), so
the environment that has advpatch installed is the one the components use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

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
    from advpatch.components._shell import ERROR_PREFIX

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
    """Run ``pipeline`` with ``arguments``; return its ``results.json`` as a dict (with the run's
    folder as ``run_folder``).

    With ``log_file``, the tasks' (verbose) output goes there instead of the terminal and a
    failure raises :class:`PipelineFailed` with the end of that log. With ``progress`` (a
    function taking a line, e.g. ``sys.stderr.write``, bound before the output moves), each task's
    start and end is reported there.
    """
    from kfp import local

    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    try:
        with _progress(pipeline, arguments, progress), _output_to(log_file), _kfp_leaves_no_trace():
            pipeline(**arguments)
    except RuntimeError as e:
        if log_file is None:
            raise
        raise PipelineFailed(_failure(str(e), log_file)) from None
    (run_folder,) = set(pipeline_root.iterdir()) - before
    results_path = run_folder / REPORT_RESULTS
    log.info("results: %s", results_path)
    results = json.loads(results_path.read_text())
    results["run_folder"] = str(run_folder)
    return results
