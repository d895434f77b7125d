"""report (the steps' summaries -> results.json, a Markdown table and an HTML report, attached to
the pipeline's MLflow run), gather and collect (a ``dsl.Collected`` list, or a report's worth of
slots, of summaries -> one summary file the report takes like any other) and close_run (the
pipeline's exit task: its MLflow run FINISHED or FAILED)."""

from __future__ import annotations

import json
from typing import List

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, step
from advpatch.steps._params import CloseRunParams, CollectParams, GatherParams, ReportParams


@step("report")
def report(p: ReportParams, track: Tracker, *, summaries: List[str], results: str, table: str,
           html: str = "") -> StepResult:
    """Collect the steps' results (their ``summary`` outputs, or :func:`gather` bundles of them, in
    table order) into ``results.json`` (at ``results``), a Markdown table (at ``table``) and an HTML
    report (at ``html``); attach the three to the pipeline's MLflow run with each row's headline
    rates as its metrics, and mark it finished."""
    from advpatch.io.files import write_text
    from advpatch.report import build_results, headline_metrics, read_step_results, render_html, render_markdown
    from advpatch.tracking import finish_pipeline_run

    steps = read_step_results(summaries)
    document = build_results(steps, title=p.title)
    markdown = render_markdown(document)
    page = render_html(document, run_name=track.ctx.pipeline_run_name)
    write_text(results, json.dumps(document, indent=1, sort_keys=True))
    write_text(table, markdown)
    if html:
        write_text(html, page)
    parent = finish_pipeline_run(track.ctx, dicts={"results.json": document},
                                 texts={"results.md": markdown, "report.html": page},
                                 metrics=headline_metrics(document["comparison"]))
    log.info("report: %d steps, %d evaluations%s", len(steps), len(document["evaluations"]),
             f", attached to MLflow run {parent}" if parent else "")
    return StepResult(step="report", label=p.title, details={"num_steps": len(steps), "mlflow_run_id": parent or ""})


def _bundle(name: str, summaries: List[str], bundle: str) -> StepResult:
    from advpatch.io.files import write_text
    from advpatch.report import bundle as to_bundle
    from advpatch.report import read_step_results

    steps = read_step_results(summaries)
    write_text(bundle, to_bundle(steps))
    return StepResult(step=name, label=f"{len(steps)} step results", details={"num_steps": len(steps)})


@step("gather")
def gather(p: GatherParams, track: Tracker, *, summaries: List[str], bundle: str) -> StepResult:
    """Put the step results of a ``dsl.Collected`` list (the summaries of a ParallelFor's tasks)
    into one file at ``bundle`` that the report takes in one of its slots. KFP lets a list of
    artifacts out of a loop only whole, and not into a component beside single artifacts."""
    return _bundle("gather", summaries, bundle)


@step("collect")
def collect(p: CollectParams, track: Tracker, *, summaries: List[str], bundle: str) -> StepResult:
    """Put the step results in a report's worth of slots into one file at ``bundle``, for a
    report (or another collect task) to take in one slot: a pipeline may have any number of steps."""
    return _bundle("collect", summaries, bundle)


SUCCEEDED_STATES = frozenset({"SUCCEEDED", "COMPLETE"})
"""The pipeline states an exit task is handed (``dsl.PipelineTaskFinalStatus.state``) that mean
success: kfp.local, and the SDK's documentation, say ``SUCCEEDED``; a KFP backend hands over the
ML Metadata state of the pipeline's DAG execution, ``COMPLETE`` (KFP 2.17's driver,
``backend/src/v2/driver/resolve.go``, and its own end-to-end test)."""


@step("close_run")
def close_run(p: CloseRunParams, track: Tracker, *, state: str) -> StepResult:
    """Mark the pipeline's MLflow run FINISHED when the pipeline's final ``state`` means success
    (:data:`SUCCEEDED_STATES`), else FAILED. Pipelines run it as their exit task, so it runs whatever
    happened (under KFP's own MLflow integration KFP closes its runs, and this does nothing)."""
    from advpatch.tracking import close_pipeline_run

    succeeded = state.upper() in SUCCEEDED_STATES
    parent = close_pipeline_run(track.ctx, succeeded)
    return StepResult(step="close_run", label=f"pipeline {'succeeded' if succeeded else 'failed'} ({state})",
                      details={"mlflow_run_id": parent or "", "succeeded": succeeded})
