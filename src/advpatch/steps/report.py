"""report (the steps' summaries -> results.json and a Markdown table, attached to the pipeline's
MLflow run) and close_run (the pipeline's exit task: its MLflow run FINISHED or FAILED)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from advpatch.steps._base import StepResult, step


@step("report")
def report(p, track, *, summaries: List[str], results: str, table: str) -> StepResult:
    """Collect the steps' results (their ``summary`` outputs, in table order) into ``results.json``
    (at ``results``) and a Markdown table (at ``table``); attach both to the pipeline's MLflow run
    and mark it finished."""
    from advpatch.files import write_text
    from advpatch.report import build_results, render_markdown
    from advpatch.tracking import finish_pipeline_run

    document = build_results([StepResult.from_json(Path(s).read_text()) for s in summaries], title=p.title)
    markdown = render_markdown(document)
    write_text(results, json.dumps(document, indent=1, sort_keys=True))
    write_text(table, markdown)
    finish_pipeline_run(track.ctx, dicts={"results.json": document}, texts={"results.md": markdown})
    return StepResult(step="report", label=p.title, details={"num_steps": len(summaries)})


@step("close_run")
def close_run(p, track, *, state: str) -> StepResult:
    """Mark the pipeline's MLflow run FINISHED when the pipeline's final ``state`` is SUCCEEDED,
    else FAILED. Pipelines run it as their exit task, so it runs whatever happened (under KFP's
    own MLflow integration KFP closes its runs, and this does nothing)."""
    from advpatch.tracking import close_pipeline_run

    parent = close_pipeline_run(track.ctx, state)
    return StepResult(step="close_run", label=f"pipeline {state.lower()}", details={"mlflow_run_id": parent or ""})
