"""The report package on hand-made step results: what a row's name can hold, what compare keys on."""

import json

from advpatch.report import build_results, render_html, render_markdown
from advpatch.report.compare import compare, parameters
from advpatch.results import Evaluation, StepResult

NASTY = "<script>alert(1)</script> $\\frac$ & \"quotes\""


def _infer(row, k_clean, k_patched, n=40, task="infer"):
    clean = Evaluation(row, "clean", {"accuracy": k_clean / n}, {"accuracy": [k_clean, n]})
    patched = Evaluation(row, "patched", {"accuracy": k_patched / n, "accuracy_patched": k_patched / n,
                                          "targeted_success_rate": (n - k_patched) / n},
                         {"accuracy": [k_patched, n], "accuracy_patched": [k_patched, n],
                          "targeted_success_rate": [n - k_patched, n]})
    return StepResult("infer", row, evaluations=[clean, patched], params={"batch_size": 256}, task=task)


def test_any_row_name_is_escaped_in_the_page_and_drawn_in_the_chart():
    """A row named like markup or TeX: text on the page, a label on the chart, no crash."""
    results = build_results([_infer(NASTY, 38, 5), _infer("baseline", 39, 4, task="infer-2")], title=NASTY)
    page = render_html(results)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; $\\frac$ &amp;" in page
    assert page.count("data:image/png;base64,") >= 1  # the rates chart drew the '$' as a dollar sign
    assert NASTY in render_markdown(results)
    json.dumps(results, allow_nan=False)  # strict JSON: every rate had a count


def test_compare_numbers_the_tasks_a_loop_repeats():
    """ParallelFor tasks share a KFP task name: compare keeps each iteration's parameters apart."""
    def sweep(scales):
        steps = [StepResult("deploy_patch", f"scale {s}", params={"patch_scale": s}, task="deploy-patch")
                 for s in scales]
        return {"steps": [{"step": s.step, "task": s.task, "label": s.label, "params": s.params} for s in steps],
                "comparison": []}

    assert parameters(sweep([0.2, 0.4])) == {"deploy-patch: patch_scale": 0.2, "deploy-patch #2: patch_scale": 0.4}
    doc = compare([{"run_id": "a" * 32, "run_name": "one", "start_time": 0, "results": sweep([0.2, 0.4])},
                   {"run_id": "b" * 32, "run_name": "two", "start_time": 0, "results": sweep([0.3, 0.4])}])
    assert doc["differing"] == [{"label": "deploy-patch: patch_scale", "values": [0.2, 0.3]}]
    assert doc["columns"] == ["run 1", "run 2"]


def _certified(label, hits, n=50, task="patch-cleanser"):
    """A certified defence's step result: clean accuracy and a curve that falls with the patch side."""
    counts = {"clean_accuracy": [45, n], **{f"certified_accuracy_{size}": [k, n] for size, k in hits.items()}}
    return StepResult("patch_cleanser", label, metrics={k: a / b for k, (a, b) in counts.items()}, counts=counts,
                      details={"certified_curve": {str(size): k / n for size, k in hits.items()}}, task=task)


def test_certified_defences_get_a_curve_and_a_table_in_size_order():
    results = build_results([_infer("baseline", 39, 4), _certified("PatchCleanser", {1: 40, 2: 30, 10: 0}),
                             _certified("derandomized smoothing", {1: 44, 2: 41, 10: 3}, task="ds")])
    page = render_html(results)
    start = page.index("<h2>Certified accuracy</h2>")
    section = page[start:page.index("<h2>", start + 1)]
    assert section.count("data:image/png;base64,") == 1  # the curves
    assert section.index("<th>1x1</th>") < section.index("<th>2x2</th>") < section.index("<th>10x10</th>")
    assert '0.80 <span class="ci">(0.67-0.89) 40/50</span>' in section and "0.06 <span" in section
    lines = render_markdown(results)
    assert "certified accuracy by patch side: 1x1 0.80 (0.67-0.89), 2x2 0.60 (0.46-0.72), 10x10 0.00" in lines
    assert "<h2>Certified accuracy</h2>" not in render_html(build_results([_infer("baseline", 39, 4)]))
