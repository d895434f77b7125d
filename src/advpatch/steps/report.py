"""report: the steps' summaries -> results.json and a Markdown table; closes the pipeline's MLflow run."""

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
