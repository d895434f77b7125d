"""Run a pipeline on this machine through ``kfp.local`` (no cluster, no container).

Every task runs as a subprocess of the current Python (``SubprocessRunner(use_venv=False)``), so
the environment that has advpatch installed is the one the components use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

log = logging.getLogger(__name__)


class PipelineFailed(RuntimeError):
    """A local pipeline run failed; the message carries the end of its log."""


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


REPORT_RESULTS = Path("report") / "results"
"""Where, in a local run's folder, the report task's results.json is (the local runner keeps each
task's outputs under ``<run folder>/<task name>/<output name>``). The pipelines return nothing: KFP
lets no output leave the exit handler that closes their MLflow run."""


def run_local(
    pipeline, arguments: Mapping[str, Any], pipeline_root: Path, log_file: Optional[Path] = None
) -> Dict[str, Any]:
    """Run ``pipeline`` with ``arguments``; return its ``results.json`` as a dict.

    With ``log_file``, the tasks' (verbose) output goes there instead of the terminal and a
    failure raises :class:`PipelineFailed` with the end of that log.
    """
    from kfp import local

    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    try:
        with _output_to(log_file):
            pipeline(**arguments)
    except RuntimeError as e:
        if log_file is None:
            raise
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-60:])
        raise PipelineFailed(f"{e}\n--- end of {log_file} ---\n{tail}") from None
    (run_folder,) = set(pipeline_root.iterdir()) - before
    results_path = run_folder / REPORT_RESULTS
    log.info("results: %s", results_path)
    return json.loads(results_path.read_text())
