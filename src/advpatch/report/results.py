"""``results.json``: every metric of every step, every rate with its count and 95% interval, the
evaluations in table order, the clean-versus-patched comparison rows and, when a pipeline swept a
deployment setting (patch scale, location, rotation), the sweep."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Sequence

from advpatch import __version__
from advpatch.evaluation import rate

RESULTS_FORMAT = "advpatch-results"
RESULTS_VERSION = 2
BUNDLE_FORMAT = "advpatch-step-results"
"""A file of several step results in one (the ``gather`` step writes one from a ``dsl.Collected`` list)."""

COMPARISON_RATES = {
    # comparison column: (condition of the evaluation it comes from, metric of that evaluation)
    "clean_accuracy": ("clean", "accuracy"),
    "patched_accuracy": ("patched", "accuracy_patched"),
    "targeted_success_rate": ("patched", "targeted_success_rate"),
}
SWEEP_KEYS = ("patch_scale", "patch_location", "rotation_max")
"""Deployment settings an evaluation's patched data records, that a sweep varies."""


def read_step_results(paths: Sequence[str]) -> List[Any]:
    """The step results in ``paths`` (``summary`` outputs, or bundles of them), in order."""
    from advpatch.errors import AdvpatchError
    from advpatch.io.files import read_manifest
    from advpatch.results import StepResult

    def parse(data: Dict[str, Any]) -> List[Any]:
        items = data["results"] if data.get("format") == BUNDLE_FORMAT else [data]
        return [StepResult.from_json(json.dumps(item)) for item in items]

    out: List[Any] = []
    for path in paths:
        out.extend(read_manifest(path, AdvpatchError, "step summary (advpatch-step-result)", parse))
    return out


def bundle(results: Sequence[Any]) -> str:
    """Several step results as one JSON document (see :func:`read_step_results`)."""
    return json.dumps({"format": BUNDLE_FORMAT, "results": [json.loads(r.to_json()) for r in results]},
                      sort_keys=True)


def rates(counts: Dict[str, Sequence[int]]) -> Dict[str, Dict[str, Any]]:
    """Metric -> its rate record (value, successes, count, 95% Wilson interval)."""
    return {k: rate(int(kn[0]), int(kn[1])) for k, kn in sorted(counts.items())}


def _setting_label(setting: Dict[str, Any], varying: Sequence[str]) -> str:
    names = {"patch_scale": "scale", "patch_location": "location", "rotation_max": "rotation"}
    return ", ".join(f"{names.get(k, k)} {setting.get(k)}" for k in varying)


def _varying(evaluations: Sequence[Dict[str, Any]]) -> List[str]:
    """The deployment settings that differ between evaluations of the same row."""
    by_row: Dict[str, List[Dict[str, Any]]] = {}
    for e in evaluations:
        if e["setting"]:
            by_row.setdefault(e["row"], []).append(e["setting"])
    return [k for k in SWEEP_KEYS if any(len({json.dumps(s.get(k)) for s in ss}) > 1 for ss in by_row.values())]


def comparison_rows(evaluations: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per table row and deployment setting, in order of first appearance: clean accuracy
    from its clean evaluation, accuracy on patched images and targeted success from its patched
    one, each with its rate record."""
    varying = _varying(evaluations)
    rows: Dict[str, Dict[str, Any]] = {}
    for e in evaluations:
        setting = {k: e["setting"].get(k) for k in varying if k in e["setting"]}
        label = e["row"] + (f" ({_setting_label(setting, varying)})" if setting else "")
        out = rows.setdefault(label, {"label": label, "row": e["row"], "setting": setting, "rates": {}})
        for column, (condition, metric) in COMPARISON_RATES.items():
            if e["condition"] == condition and metric in e["rates"]:
                out[column] = e["rates"][metric]["value"]
                out["rates"][column] = e["rates"][metric]
    return [r for r in rows.values() if r["rates"]]


def sweep(comparison: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The comparison rows of a sweep, as curves: for the first varying setting, each row's points
    in the order of that setting. Empty when nothing was swept."""
    keys = [k for k in SWEEP_KEYS if any(k in r["setting"] for r in comparison)]
    if not keys:
        return {}
    key = keys[0]
    curves: Dict[str, List[Dict[str, Any]]] = {}
    for r in comparison:
        if key in r["setting"]:
            curves.setdefault(r["row"], []).append({"x": r["setting"][key], "rates": r["rates"]})
    for points in curves.values():
        points.sort(key=lambda p: (isinstance(p["x"], str), p["x"]))
    return {"parameter": key, "curves": curves}


def build_results(steps: Sequence[Any], title: str = "advpatch results") -> Dict[str, Any]:
    """``results.json`` from step results, in table order."""
    evaluations = []
    for s in steps:
        for e in s.evaluations:
            evaluations.append({
                "label": e.label, "row": e.row, "condition": e.condition, "setting": s.details.get("setting", {}),
                **e.metrics, "rates": rates(e.counts),
                "confusion_matrix": {"categories": e.categories, "matrix": e.matrix}, "samples": e.samples,
            })
    comparison = comparison_rows(evaluations)
    varying = _varying(evaluations)
    for e in evaluations:  # in a sweep, an evaluation's label says where on the sweep it is
        setting = {k: e["setting"][k] for k in varying if k in e["setting"]}
        if setting:
            e["label"] = f"{e['row']} ({_setting_label(setting, varying)}) / {e['condition']}"
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "advpatch_version": __version__,
        "title": title,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": [{"step": s.step, "task": s.task, "label": s.label, "metrics": s.metrics,
                   "rates": rates(s.counts), "details": s.details, "params": s.params} for s in steps],
        "evaluations": evaluations,
        "comparison": comparison,
        "sweep": sweep(comparison),
    }


def headline_metrics(comparison: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """The comparison rows' rates as MLflow metrics of the pipeline's run, ``<rate>/<row>`` (MLflow
    charts group them by rate), so MLflow's run comparison works across pipeline runs."""
    import re

    out = {}
    for row in comparison:
        slug = re.sub(r"[^0-9A-Za-z.\-]+", "_", row["label"]).strip("_")
        for metric, r in row["rates"].items():
            out[f"{metric}/{slug}"] = float(r["value"])
    return out
