"""The results a person reads at a glance: one table, the same in the terminal, in KFP's Markdown
viewer and in MLflow; plus the machine-readable ``results.json`` behind it."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Sequence, Tuple

from advpatch import __version__

RESULTS_FORMAT = "advpatch-results"
RESULTS_VERSION = 1

# (metric key, column title, format) of the evaluation table; a column shows only when some row has it.
EVAL_COLUMNS: Sequence[Tuple[str, str, str]] = (
    ("accuracy", "accuracy", "{:.4f}"),
    ("accuracy_patched", "acc. patched", "{:.4f}"),
    ("accuracy_unpatched", "acc. unpatched", "{:.4f}"),
    ("targeted_success_rate", "targeted success", "{:.4f}"),
    ("loss", "loss", "{:.4f}"),
    ("f1_macro", "F1 (macro)", "{:.4f}"),
    ("auc_macro_ovr", "AUC (ovr)", "{:.4f}"),
    ("num_examples", "images", "{:.0f}"),
)


COMPARISON_COLUMNS: Sequence[Tuple[str, str, str]] = (
    ("clean_accuracy", "clean accuracy", "{:.4f}"),
    ("patched_accuracy", "accuracy on patched", "{:.4f}"),
    ("targeted_success_rate", "targeted success", "{:.4f}"),
)


def comparison_rows(evaluations: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per table row (an evaluation's ``row`` field), in order of first appearance: clean
    accuracy from its ``clean`` evaluation; accuracy on patched images and targeted success from
    its ``patched`` one."""
    rows: Dict[str, Dict[str, Any]] = {}
    for e in evaluations:
        out = rows.setdefault(e["row"], {"label": e["row"]})
        if e["condition"] == "clean":
            out["clean_accuracy"] = e["accuracy"]
        elif e["condition"] == "patched":
            out["patched_accuracy"] = e.get("accuracy_patched", e["accuracy"])
            if "targeted_success_rate" in e:
                out["targeted_success_rate"] = e["targeted_success_rate"]
    return [r for r in rows.values() if len(r) > 1]


def build_results(steps: Sequence[Any], title: str = "advpatch results") -> Dict[str, Any]:
    """``results.json``: every metric of every step, the evaluation rows in table order, and the
    clean-versus-patched comparison rows."""
    evaluations = [{"label": s.label, "row": s.row, "condition": s.condition, **s.metrics}
                   for s in steps if s.step == "infer"]
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "advpatch_version": __version__,
        "title": title,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": [
            {"step": s.step, "label": s.label, "metrics": s.metrics, "details": s.details,
             **({"row": s.row, "condition": s.condition} if s.step == "infer" else {}),
             **({"confusion_matrix": {"categories": s.confusion_categories, "matrix": s.confusion_matrix}}
                if s.confusion_matrix else {})}
            for s in steps
        ],
        "evaluations": evaluations,
        "comparison": comparison_rows(evaluations),
    }


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def render_table(rows: List[Dict[str, Any]], columns: Sequence[Tuple[str, str, str]]) -> str:
    """A Markdown table whose columns line up in a terminal too."""
    used = [c for c in columns if any(c[0] in r for r in rows)]
    header = ["", *[title for _, title, _ in used]]
    body = [[str(r["label"]), *[_cell(r.get(k), fmt) for k, _, fmt in used]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]

    def line(cells: List[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *[line(b) for b in body]])


def _step_line(s: Dict[str, Any]) -> str:
    m, d = s["metrics"], s["details"]
    if s["step"] == "train":
        acc, robust = m.get("test_accuracy"), m.get("test_pgd_accuracy")
        return (f"final training accuracy {m.get('final_accuracy', float('nan')):.4f}"
                + (f", test accuracy {acc:.4f}" if acc is not None else "")
                + (f", under PGD {robust:.4f}" if robust is not None else "")
                + (f", registered as `{d['model_uri']}`" if d.get("registered_version") else ""))
    if s["step"] == "gen_patch":
        return (f"targets {', '.join(d['targets'])}; targeted success on the generation images "
                f"{m['mean_gen_targeted_success_rate']:.4f} (mean), final loss {m['mean_final_loss']:.4f}")
    if s["step"] == "deploy_patch":
        return (f"{m['num_patched']:.0f} images patched, {m['num_examples']:.0f} written; "
                f"l2 distance to the clean image {m.get('l2_mean', float('nan')):.3f} (mean), "
                f"l_inf {m.get('l_inf_mean', float('nan')):.3f}")
    return ", ".join(f"{k} {v:.4g}" for k, v in list(m.items())[:6])


def render_markdown(results: Dict[str, Any]) -> str:
    parts = [f"## {results['title']}", ""]
    if results.get("comparison"):
        parts += [render_table(results["comparison"], COMPARISON_COLUMNS), "", "All evaluations:", ""]
    if results["evaluations"]:
        parts += [render_table(results["evaluations"], EVAL_COLUMNS), ""]
    for s in results["steps"]:
        if s["step"] != "infer":
            parts.append(f"- **{s['label']}**: {_step_line(s)}")
    parts.append(f"\n_advpatch {results['advpatch_version']}_")
    return "\n".join(parts) + "\n"
