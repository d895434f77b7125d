"""What a run's results look like to a person: ``results.json`` (:mod:`.results`), the Markdown
table of the terminal, KFP and MLflow (:mod:`.tables`), and the HTML report with charts, patches
and sample images (:mod:`.html`, charts in :mod:`.charts`)."""

from typing import Any, Dict

from advpatch.report.results import (
    RESULTS_FORMAT,
    RESULTS_VERSION,
    build_results,
    bundle,
    headline_metrics,
    read_step_results,
)
from advpatch.report.tables import format_rate, render_markdown, render_table

__all__ = ["RESULTS_FORMAT", "RESULTS_VERSION", "build_results", "bundle", "format_rate", "headline_metrics",
           "read_step_results", "render_html", "render_markdown", "render_table"]


def render_html(results: Dict[str, Any], *, run_name: str = "", mlflow_run_id: str = "") -> str:
    """The HTML report of a results document (see :func:`advpatch.report.html.render`)."""
    from advpatch.report.html import render

    return render(results, run_name=run_name, mlflow_run_id=mlflow_run_id)
