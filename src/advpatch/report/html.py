"""The HTML report: one self-contained page (images inline as data URIs, no script, no request
leaves it; a Content-Security-Policy says so to the browser), the same file in KFP's HTML viewer
(a sandboxed frame) and on the pipeline's MLflow run."""

from __future__ import annotations

import html
from typing import Any, Dict, Iterable, Optional, Sequence

from advpatch.report import charts
from advpatch.report.tables import COMPARISON_COLUMNS, EVAL_COLUMNS, counts_note, format_rate

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d232b;
  margin:0;background:#f5f6f8}
main{max-width:1080px;margin:0 auto;padding:24px 28px 40px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:30px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.meta{color:#5b6570;font-size:12.5px}.note{color:#5b6570;font-size:12.5px;margin:6px 0}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0 4px}
.card{flex:1 1 200px;border:1px solid #e3e6ea;border-radius:8px;padding:10px 14px;background:#fafbfc}
.card .v{font-size:24px;font-weight:600}.card .k{color:#5b6570;font-size:12px}.card .i{color:#5b6570;font-size:11.5px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:4px 10px;border-bottom:1px solid #eceef1;
  text-align:right;white-space:nowrap}th{background:#f3f5f7;font-weight:600}td:first-child,th:first-child{text-align:left}
td .ci{color:#6b7580;font-size:11.5px}img.chart{max-width:100%;height:auto;display:block;margin:6px 0}
.patches{display:flex;gap:16px;flex-wrap:wrap}.patch{text-align:center;font-size:12px}
.patch img{display:block;margin:0 auto 4px;width:112px;height:112px;image-rendering:pixelated;border:1px solid #d5d9de;
  background:repeating-conic-gradient(#e8eaed 0% 25%,#fff 0% 50%) 50%/12px 12px}
.grid td{padding:3px 4px;text-align:center;vertical-align:top}.grid th{font-size:12px}
.grid img{width:64px;height:64px;image-rendering:pixelated;display:block;margin:0 auto;border:2px solid #c9ced4}
.grid .ok img{border-color:#2e9d57}.grid .bad img{border-color:#d64545}.grid .hit img{border-color:#8e44ad}
.grid .cap{font-size:10.5px;color:#4a525b}.legend span{display:inline-block;margin-right:14px;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.wide{overflow-x:auto;max-width:100%}details{margin:8px 0}summary{cursor:pointer;color:#2c5d9f}
code{font-size:12px;background:#f3f5f7;padding:1px 4px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png_base64: str, alt: str, cls: str = "") -> str:
    attribute = f' class="{cls}"' if cls else ""
    return f'<img{attribute} alt="{_e(alt)}" src="data:image/png;base64,{png_base64}">'


def _rate_cell(r: Optional[Dict[str, Any]]) -> str:
    if r is None:
        return "<td>-</td>"
    title = f"{r['successes']} of {r['count']}; 95% Wilson interval {r['low']:.4f}-{r['high']:.4f}"
    value, _, interval = format_rate(r).partition(" ")
    counts = f'{r["successes"]}/{r["count"]}'
    return f'<td title="{_e(title)}">{_e(value)} <span class="ci">{_e(interval)} {counts}</span></td>'


def _table(rows: Sequence[Dict[str, Any]], columns: Sequence[Any]) -> str:
    used = [c for c in columns if any(c[0] in r or c[0] in r.get("rates", {}) for r in rows)]
    head = "".join(f"<th>{_e(t)}</th>" for _, t, _ in used)
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in used:
            if key in r.get("rates", {}):
                cells.append(_rate_cell(r["rates"][key]))
            else:
                value = r.get(key)
                cells.append(f"<td>{_e(fmt.format(value)) if isinstance(value, (int, float)) else '-'}</td>")
        body.append(f"<tr><td>{_e(r['label'])}</td>{''.join(cells)}</tr>")
    return f"<div class=wide><table><tr><th></th>{head}</tr>{''.join(body)}</table></div>"


def _cards(results: Dict[str, Any]) -> str:
    comparison = results.get("comparison") or []
    if not comparison:
        return ""
    base = comparison[0]["rates"]
    cards = []

    def card(rate: Optional[Dict[str, Any]], what: str) -> None:
        if rate:
            cards.append(f'<div class="card"><div class="v">{format_rate(rate, False)}</div><div class="k">{_e(what)}'
                         f'</div><div class="i">95% interval {format_rate(rate).partition(" ")[2]}, '
                         f'{rate["successes"]}/{rate["count"]}</div></div>')

    row = comparison[0]["label"]
    card(base.get("clean_accuracy"), f"{row}: clean accuracy")
    card(base.get("patched_accuracy"), f"{row}: accuracy on patched images")
    card(base.get("targeted_success_rate"), f"{row}: targeted success of the patch")
    others = [r for r in comparison[1:] if "patched_accuracy" in r["rates"]]
    if others:
        best = max(others, key=lambda r: r["rates"]["patched_accuracy"]["value"])
        card(best["rates"]["patched_accuracy"], f"best on patched images: {best['label']}")
    return f'<div class="cards">{"".join(cards)}</div>'


def _patches(steps: Iterable[Dict[str, Any]]) -> str:
    out = []
    for s in steps:
        if s["step"] != "gen_patch" or not s["details"].get("previews"):
            continue
        figures = []
        for i, (png, target) in enumerate(zip(s["details"]["previews"], s["details"]["targets"])):
            rate = s.get("rates", {}).get(f"patch_{i}_gen_targeted_success_rate")
            success = f"<br>success on its generation images {format_rate(rate)}" if rate else ""
            figures.append(f'<div class="patch">{_img(png, f"patch {i}, target {target}")}'
                           f"patch {i}: target <b>{_e(target)}</b>{success}</div>")
        out.append(f'<p class="note">{_e(s["label"])}</p><div class="patches">{"".join(figures)}</div>')
    return "".join(out)


def _samples(evaluations: Sequence[Dict[str, Any]]) -> str:
    """A row of sample images per evaluation: one column per test image when every evaluation
    shows the same images (the usual case: one test set, clean and patched), else each row its own."""
    shown = [e for e in evaluations if e.get("samples")]
    if not shown:
        return ""
    same = len({tuple(smp["source_index"] for smp in e["samples"]) for e in shown}) == 1
    head = "".join(f"<th>image {smp['source_index']}</th>" for smp in shown[0]["samples"]) if same else ""
    rows = []
    for e in shown:
        cells = []
        for smp in e["samples"]:
            cls = "ok" if smp["predicted"] == smp["label"] else "bad"
            where = "" if same else f"#{smp['source_index']}: "
            cap = f"{where}{_e(smp['label'])} &rarr; {_e(smp['predicted'])}"
            alt = f"{e['label']}: image {smp['source_index']}"
            cells.append(f'<td class="{cls}">{_img(smp["png"], alt)}'
                         f'<span class="cap">{cap} ({smp["confidence"]:.2f})</span></td>')
        rows.append(f"<tr><th>{_e(e['label'])}</th>{''.join(cells)}</tr>")
    legend = ('<p class="legend"><span><i class="sw" style="background:#2e9d57"></i>predicted the true label</span>'
              '<span><i class="sw" style="background:#d64545"></i>wrong</span>'
              f'<span>caption: {"" if same else "#image: "}true &rarr; predicted (confidence)</span></p>')
    top = f"<tr><th></th>{head}</tr>" if same else ""
    return f'{legend}<div class=wide><table class="grid">{top}{"".join(rows)}</table></div>'


def _distances(steps: Iterable[Dict[str, Any]]) -> str:
    names = ("l_inf", "l1", "l2", "cosine_similarity", "wasserstein")
    rows = []
    for s in steps:
        m = s["metrics"]
        if s["step"] == "deploy_patch" and any(f"{n}_mean" in m for n in names):
            cells = "".join(f"<td>{m[f'{n}_mean']:.4f} <span class=ci>median {m[f'{n}_median']:.4f}, max "
                            f"{m[f'{n}_max']:.4f}</span></td>" if f"{n}_mean" in m else "<td>-</td>" for n in names)
            rows.append(f"<tr><td>{_e(s['label'])}</td>{cells}</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{n.replace('_', ' ')} (mean)</th>" for n in names)
    return (f"<div class=wide><table><tr><th>patched images vs their clean originals</th>{head}</tr>"
            f"{''.join(rows)}</table></div>"
            '<p class="note">Per image, on pixels in [0, 1]; over the images each deployment patched.</p>')


def _parameters(steps: Iterable[Dict[str, Any]]) -> str:
    out = []
    for s in steps:
        if not s.get("params"):
            continue
        rows = "".join(f"<tr><td>{_e(k)}</td><td style='text-align:left'><code>{_e(repr(v))}</code></td></tr>"
                       for k, v in sorted(s["params"].items()))
        out.append(f"<details><summary>{_e(s['step'])}: {_e(s['label'])}</summary><div class=wide><table>{rows}</table>"
                   "</div></details>")
    return "".join(out)


def _certified_table(steps: Iterable[Dict[str, Any]]) -> str:
    """One row per certified defence, one column per patch side, each cell a rate with its interval."""
    found = charts.certified_steps(list(steps))
    if not found:
        return ""
    sizes = sorted({int(size) for s in found for size in s["details"]["certified_curve"]})
    head = "".join(f"<th>{size}x{size}</th>" for size in sizes)
    rows = "".join(f"<tr><td>{_e(s['label'])}</td>" + "".join(
        _rate_cell(s["rates"].get(f"certified_accuracy_{size}")) for size in sizes) + "</tr>" for s in found)
    return f"<div class=wide><table><tr><th>defence</th>{head}</tr>{rows}</table></div>"


def _section(title: str, body: str, note: str = "") -> str:
    if not body:
        return ""
    return f"<h2>{_e(title)}</h2>{f'<p class=note>{note}</p>' if note else ''}{body}"


def render(results: Dict[str, Any], *, run_name: str = "", mlflow_run_id: str = "") -> str:
    """The report page of a results document (see :mod:`advpatch.report.results`)."""
    steps, evaluations = results["steps"], results["evaluations"]
    comparison = results.get("comparison") or []
    meta = [f"created {results['created']}", f"advpatch {results['advpatch_version']}"]
    if run_name:
        meta.append(f"pipeline run {run_name}")
    if mlflow_run_id:
        meta.append(f"MLflow run {mlflow_run_id}")
    chart = charts.rates_chart(comparison)
    sweep = charts.sweep_chart(results.get("sweep") or {})
    confusion = charts.confusion_chart(evaluations)
    training = charts.training_chart(steps)
    certified = charts.certified_chart(steps)
    mixed = any("accuracy_unpatched" in e for e in evaluations)
    eval_columns = [c for c in EVAL_COLUMNS if mixed or c[0] != "accuracy_patched"]
    parts = [
        f"<h1>{_e(results['title'])}</h1><div class=meta>{_e(' · '.join(meta))}</div>",
        _cards(results),
        _section("Clean accuracy, accuracy on patched images and targeted success",
                 (_img(chart, "rates per row", "chart") if chart else "") + _table(comparison, COMPARISON_COLUMNS),
                 _e(counts_note(comparison)) if comparison else ""),
        _section(f"Sweep over {(results.get('sweep') or {}).get('parameter', '').replace('_', ' ')}",
                 _img(sweep, "sweep", "chart") if sweep else ""),
        _section("Certified accuracy", (_img(certified, "certified accuracy by patch size", "chart") if certified
                                         else "") + _certified_table(steps),
                 "Share of the clean test images whose prediction is right and provably unchanged by any square "
                 "patch of that side, anywhere (dotted: the defence's clean accuracy). Each certificate is per "
                 "image, in the step's certificates artifact."),
        _section("Patches", _patches(steps)),
        _section("Test images, clean and patched", _samples(evaluations),
                 "Evenly spaced test images of each evaluation, as the model saw them (a defence's rows: after "
                 "the defence)."),
        _section("Confusion matrices", _img(confusion, "confusion matrices", "chart") if confusion else ""),
        _section("Training", _img(training, "training curves", "chart") if training else ""),
        _section("How far the patches move an image", _distances(steps)),
        _section("All evaluations", _table(evaluations, eval_columns) if evaluations else ""),
        _section("Parameters", _parameters(steps), "Every step's parameters, as validated."),
    ]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{_e(results['title'])}</title><style>{STYLE}</style></head><body><main>"
            + "".join(p for p in parts if p) + "</main></body></html>\n")
