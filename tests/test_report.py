"""The report package on hand-made step results: what a row's name can hold, what compare keys on."""

import json

from advpatch.report import build_results, render_html, render_markdown
from advpatch.report.compare import compare, parameters
from advpatch.steps._base import Evaluation, StepResult

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
