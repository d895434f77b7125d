"""The results as text: one comparison table, the same in the terminal, in KFP's Markdown viewer
and in MLflow. Every rate shows its 95% interval, to as many decimals as its count supports."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from advpatch.evaluation import decimals

# (key, column title, format for plain numbers); a column shows only when some row has it. A key
# that is a rate of the row (in its "rates") prints with its interval instead.
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


def format_rate(r: Dict[str, Any], with_interval: bool = True) -> str:
    """``0.983 (0.968-0.991)``: the value and its interval, to the decimals its count supports."""
    d = decimals(r["count"])
    text = f"{r['value']:.{d}f}"
    return f"{text} ({r['low']:.{d}f}-{r['high']:.{d}f})" if with_interval else text


def _cell(row: Dict[str, Any], key: str, fmt: str) -> str:
    r = row.get("rates", {}).get(key)
    if r is not None:
        return format_rate(r)
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def render_table(rows: List[Dict[str, Any]], columns: Sequence[Tuple[str, str, str]]) -> str:
    """A Markdown table whose columns line up in a terminal too."""
    used = [c for c in columns if any(c[0] in r or c[0] in r.get("rates", {}) for r in rows)]
    header = ["", *[title for _, title, _ in used]]
    body = [[str(r["label"]), *[_cell(r, k, fmt) for k, _, fmt in used]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]

    def line(cells: List[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *[line(b) for b in body]])


def counts_note(comparison: Sequence[Dict[str, Any]]) -> str:
    """What the comparison's rates count, in one sentence (when every row counts the same)."""
    def common(column: str) -> Optional[int]:
        found = {r["rates"][column]["count"] for r in comparison if column in r["rates"]}
        return found.pop() if len(found) == 1 else None

    clean, patched, eligible = common("clean_accuracy"), common("patched_accuracy"), common("targeted_success_rate")
    parts = []
    if clean:
        parts.append(f"clean accuracy over {clean} images")
    if patched:
        parts.append(f"accuracy on patched images over {patched}")
    if eligible:
        parts.append(f"targeted success over the {eligible} patched images not already of the target class")
    counted = "; ".join(parts) if parts else "counts per row in results.json"
    return f"Rates with 95% Wilson intervals; {counted}."


def _step_line(s: Dict[str, Any]) -> str:
    m, d, r = s["metrics"], s["details"], s.get("rates", {})

    def show(key: str) -> str:
        return format_rate(r[key]) if key in r else f"{m[key]:.4f}"

    if s["step"] == "train":
        return (f"final training accuracy {m.get('final_accuracy', float('nan')):.4f}"
                + (f", test accuracy {show('test_accuracy')}" if "test_accuracy" in m else "")
                + (f", under PGD {show('test_pgd_accuracy')}" if "test_pgd_accuracy" in m else "")
                + (f", registered as `{d['model_uri']}`" if d.get("registered_version") else ""))
    if s["step"] == "gen_patch":
        return (f"targets {', '.join(d['targets'])}; targeted success on the generation images "
                f"{show('mean_gen_targeted_success_rate')} (pooled), final loss {m['mean_final_loss']:.4f}")
    if s["step"] == "deploy_patch":
        return (f"{m['num_patched']:.0f} images patched, {m['num_examples']:.0f} written; "
                f"l2 distance to the clean image {m.get('l2_mean', float('nan')):.3f} (mean), "
                f"l_inf {m.get('l_inf_mean', float('nan')):.3f}")
    if d.get("certified_curve"):
        return "certified accuracy by patch side: " + ", ".join(
            f"{size}x{size} {show(f'certified_accuracy_{size}')}" for size in sorted(d["certified_curve"], key=int))
    return ", ".join(f"{k} {v:.4g}" for k, v in list(m.items())[:6])


def render_markdown(results: Dict[str, Any]) -> str:
    parts = [f"## {results['title']}", ""]
    if results.get("comparison"):
        parts += [render_table(results["comparison"], COMPARISON_COLUMNS), "", counts_note(results["comparison"]),
                  "", "All evaluations:", ""]
    if results["evaluations"]:
        mixed = any("accuracy_unpatched" in e for e in results["evaluations"])  # else acc. patched = accuracy
        columns = [c for c in EVAL_COLUMNS if mixed or c[0] != "accuracy_patched"]
        parts += [render_table(results["evaluations"], columns), ""]
    for s in results["steps"]:
        if s["step"] not in ("infer", "report", "gather"):
            parts.append(f"- **{s['label']}**: {_step_line(s)}")
    parts.append(f"\n_advpatch {results['advpatch_version']}_")
    return "\n".join(parts) + "\n"
