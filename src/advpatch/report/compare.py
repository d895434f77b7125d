"""Pipeline runs side by side (``advpatch compare``): the parameters that differ and every row of
their comparison tables, from the ``results.json`` each run's MLflow parent run holds."""

from __future__ import annotations

import html
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from advpatch.errors import CompareError
from advpatch.report import charts
from advpatch.report.tables import COMPARISON_COLUMNS, render_table

PIPELINE_RUNS = "tags.`advpatch.kind` = 'pipeline' and attributes.status = 'FINISHED'"



def fetch_runs(experiment: str = "", run_ids: Sequence[str] = (), max_runs: int = 10) -> List[Dict[str, Any]]:
    """The pipeline runs to compare, oldest first: ``run_ids`` (MLflow ids of pipeline parent runs),
    else the latest ``max_runs`` finished pipeline runs of ``experiment``. Each: run id, name,
    start time and its results document."""
    from advpatch import settings
    from advpatch.tracking import configure

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = configure()
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if run_ids:
            runs = [client.get_run(r) for r in run_ids]
        else:
            name = settings.experiment_name(experiment)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise CompareError(f"experiment must name an MLflow experiment at {uri}, got {name!r}")
            runs = client.search_runs([found.experiment_id], PIPELINE_RUNS, order_by=["attributes.start_time DESC"],
                                      max_results=max_runs)[::-1]
    except MlflowException as e:
        raise CompareError(f"cannot read the runs to compare from MLflow ({uri}): {e.message}") from None
    if len(runs) < 2:
        raise CompareError(f"compare needs at least 2 finished pipeline runs, found {len(runs)}"
                           + ("" if run_ids else f" in experiment {settings.experiment_name(experiment)!r}"))
    out = []
    for run in runs:
        try:
            results = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/results.json")
        except (MlflowException, OSError):
            raise CompareError(f"run {run.info.run_id} ({run.info.run_name}) has no results.json: not an advpatch "
                               "pipeline run, or one that failed before its report") from None
        out.append({"run_id": run.info.run_id, "run_name": run.info.run_name or run.info.run_id,
                    "start_time": run.info.start_time, "results": results})
    return out


def parameters(results: Dict[str, Any]) -> Dict[str, Any]:
    """A run's parameters, ``task: name`` -> value, from every step's validated parameters (the
    KFP task names, ``train-2``, are the same in every run of a pipeline; the labels say settings)."""
    out: Dict[str, Any] = {}
    seen: Dict[str, int] = {}
    for s in results["steps"]:
        task = s.get("task") or s["step"]
        seen[task] = seen.get(task, 0) + 1  # a ParallelFor's tasks share a name: number them in order
        name = task if seen[task] == 1 else f"{task} #{seen[task]}"
        out.update({f"{name}: {k}": v for k, v in sorted((s.get("params") or {}).items())})
    return out


def compare(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The comparison document: the runs, the parameters whose values differ between them, and each
    comparison row's rates per run (``None`` where a run has no such row)."""
    columns = [f"run {i}" for i in range(1, len(runs) + 1)]  # short: table headers and chart labels
    params = [parameters(r["results"]) for r in runs]
    keys = list(dict.fromkeys(k for p in params for k in p))
    differing = [{"label": k, "values": [p.get(k) for p in params]} for k in keys
                 if len({repr(p.get(k)) for p in params}) > 1]
    labels = list(dict.fromkeys(row["label"] for r in runs for row in r["results"].get("comparison", [])))
    tables = []
    for metric, title, _ in COMPARISON_COLUMNS:
        rows = []
        for label in labels:
            rates = {}
            for column, r in zip(columns, runs):
                row = next((x for x in r["results"].get("comparison", []) if x["label"] == label), None)
                if row and metric in row.get("rates", {}):
                    rates[column] = row["rates"][metric]
            if rates:
                rows.append({"label": label, "rates": rates})
        if rows:
            tables.append({"metric": metric, "title": title, "rows": rows})
    return {"runs": [{k: r[k] for k in ("run_id", "run_name", "start_time")} for r in runs], "columns": columns,
            "differing": differing, "tables": tables}


def render_markdown(doc: Dict[str, Any]) -> str:
    columns = [(c, c, "{}") for c in doc["columns"]]
    parts = ["## Runs compared", ""]
    parts += [f"- {c}: {r['run_name']} (MLflow run {r['run_id']}), started {_when(r['start_time'])}"
              for c, r in zip(doc["columns"], doc["runs"])]
    parts += ["", "### Parameters that differ", ""]
    if doc["differing"]:
        rows = [{"label": d["label"], **{c: _value(v) for c, v in zip(doc["columns"], d["values"])}}
                for d in doc["differing"]]
        parts.append(render_table(rows, columns))
    else:
        parts.append("none: the runs had the same parameters")
    for t in doc["tables"]:
        parts += ["", f"### {t['title']}", "", render_table(t["rows"], columns)]
    return "\n".join(parts) + "\n"


def render_html(doc: Dict[str, Any]) -> str:
    """The same as a self-contained page, with the rates of every run side by side as bars."""
    from advpatch.report.html import CSP, STYLE, _img, _table

    e = html.escape
    columns = [(c, c, "{}") for c in doc["columns"]]
    runs = "".join(f"<li><b>{e(c)}</b>: {e(r['run_name'])} (MLflow run <code>{e(r['run_id'])}</code>), started "
                   f"{e(_when(r['start_time']))}</li>"
                   for c, r in zip(doc["columns"], doc["runs"]))
    if doc["differing"]:
        head = "".join(f"<th>{e(c)}</th>" for c in doc["columns"])
        body = "".join(f"<tr><td>{e(d['label'])}</td>{''.join(f'<td>{e(_value(v))}</td>' for v in d['values'])}</tr>"
                       for d in doc["differing"])
        differing = f"<div class=wide><table><tr><th></th>{head}</tr>{body}</table></div>"
    else:
        differing = "<p class=note>none: the runs had the same parameters</p>"
    bars: List[Dict[str, Any]] = [{"label": f"{row['label']} · {column}", "rates": {t["metric"]: row["rates"][column]}}
            for t in doc["tables"] for row in t["rows"] for column in row["rates"]]
    merged: Dict[str, Dict[str, Any]] = {}
    for b in bars:
        merged.setdefault(b["label"], {"label": b["label"], "rates": {}})["rates"].update(b["rates"])
    chart = charts.rates_chart(list(merged.values()))
    tables = "".join(f"<h2>{e(t['title'])}</h2>{_table(t['rows'], columns)}" for t in doc["tables"])
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>advpatch: runs compared</title><style>{STYLE}</style></head><body><main>"
            f"<h1>Runs compared</h1><ul>{runs}</ul><h2>Parameters that differ</h2>{differing}"
            + (f"<h2>Rates per row and run</h2>{_img(chart, 'rates per row and run', 'chart')}" if chart else "")
            + tables + "</main></body></html>\n")


def _value(v: Any) -> str:
    return "-" if v is None else str(v)


def _when(start_ms: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start_ms / 1000)) + " UTC" if start_ms else "?"
