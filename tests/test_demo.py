"""`make demo`: the seed notebook's whole MNIST experiment, end to end through kfp.local."""

import json
import re

import numpy as np
import pytest
from conftest import look_at

from advpatch import settings
from advpatch.defences.base import model_defences
from advpatch.defences.preprocessing import registered


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """`make demo` as a new user runs it (the embedded digits), twice at once, each in a fresh
    folder of its own: what it printed and where. The two serve both the demo's own tests and the
    same-seed-same-bytes test."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("demo-pair")
    env = {k: v for k, v in os.environ.items() if k not in (settings.ENV_OUTPUT_DIR, settings.ENV_TRACKING_URI)}
    procs = {}
    for name in ("first", "second"):
        (root / name).mkdir()
        procs[name] = subprocess.Popen([sys.executable, "-m", "advpatch.app.cli", "demo"], cwd=root / name, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        printed[name] = out
    return {"root": root, "printed": printed}


@pytest.mark.pipeline
def test_demo_runs_the_full_experiment(demo_pair, mnist_folder, tmp_path, monkeypatch, capsys, browser):
    """What `make demo` runs: every row of the seed notebook's experiment."""
    from advpatch.app import cli

    work, printed = demo_pair["root"] / "first", demo_pair["printed"]["first"]
    results = json.loads((work / "outputs" / "demo" / "results.json").read_text())
    rows = {r["label"]: r for r in results["comparison"]}
    assert list(rows) == ["baseline", *[d.label for d in registered().values()],
                          *[d.label for d in model_defences("training").values()]]
    assert [(e["row"], e["condition"]) for e in results["evaluations"]] == [
        (row, condition) for row in rows for condition in ("clean", "patched")]
    for label, row in rows.items():
        assert {"clean_accuracy", "patched_accuracy", "targeted_success_rate"} <= set(row), label
        assert f"| {label}" in printed
    assert rows["baseline"]["patched_accuracy"] < rows["baseline"]["clean_accuracy"] - 0.3
    # training on patched images (the attacker's own patches) recovers most of the accuracy
    assert rows["trained on patched data"]["patched_accuracy"] > rows["baseline"]["patched_accuracy"] + 0.2
    trains = [s for s in results["steps"] if s["step"] == "train"]
    assert [t["details"]["model_uri"] for t in trains] == [
        "models:/mnist_baseline_le_net/1", "models:/mnist_patched_le_net/1", "models:/mnist_pgd_le_net/1"]
    assert trains[2]["metrics"]["test_pgd_accuracy"] > trains[0]["metrics"]["test_pgd_accuracy"]
    # every rate carries its count and 95% interval, in the file and in the printed table
    for label, row in rows.items():
        r = row["rates"]["targeted_success_rate"]
        assert r["low"] <= r["value"] <= r["high"] and r["count"] > 0 and r["interval"] == "wilson-95", label
    base = rows["baseline"]["rates"]["clean_accuracy"]
    assert base["count"] == 359 and base["value"] == base["successes"] / 359  # the embedded digits' test split
    assert f"{base['value']:.3f} ({base['low']:.3f}-{base['high']:.3f})" in printed
    # progress, one line per task as it ends, then where the report is
    done = [line for line in printed.splitlines() if "] ok " in line]
    # 2 loads, 3 trainings, gen_patch, 2 deployments, a baseline infer, a task and an infer per defence, report, exit
    tasks = 11 + 2 * len(registered())
    assert len(done) == tasks and done[-1].lstrip().startswith(f"[{tasks}/{tasks}]"), printed
    page_file = work / "outputs" / "demo" / "report.html"
    assert page_file.is_file() and str(page_file) in printed
    assert "PGD adversarial training" in page_file.read_text()
    # the pipeline's MLflow run: the report and one metric per row and rate, comparable across runs
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'outputs' / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["targeted_success_rate/baseline"] == rows["baseline"]["targeted_success_rate"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"report.html", "results.json",
                                                                          "results.md"}

    # the demo's report in a real browser: nothing leaves the page, every picture decodes
    page, requests, errors, pixels = look_at(browser, page_file.as_uri(), tmp_path / "demo-report.png")
    images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    page.close()
    assert requests == [page_file.as_uri()] and errors == []
    assert len(images) > 60 and all(w > 0 for w in images)  # charts, 3 patches, 12 x 8 samples
    assert (pixels.min(axis=2) < 200).mean() > 0.05 and len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200

    # MLflow's own UI on the demo's store, as a person opens it: the training-runs page lists the
    # pipeline's run; expanded, its steps by name, with the datasets they used
    from advpatch.app.tracking_server import local_server

    with local_server(work / "outputs" / "mlflow", tmp_path / "mlflow-ui.log") as uri:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{uri}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
        page.wait_for_selector(f"text={parent.info.run_name}", timeout=60000)
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # expand the parent
        page.wait_for_selector("text=infer: baseline / patched", timeout=30000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "mlflow-ui.png"))
        text = page.inner_text("body")
        page.close()
    for name in ("train: baseline", "train: PGD adversarial training", "infer: JPEG compression / clean",
                 "evaluate: trained on patched data / patched", "gen_patch: 3 patches"):
        assert name in text, name
    assert "Training" in text and "Generation" in text  # the Dataset column: inputs with their context

    # a second run with other settings into the same store, then the two side by side
    monkeypatch.delenv(settings.ENV_TRACKING_URI, raising=False)
    monkeypatch.delenv(settings.ENV_OUTPUT_DIR, raising=False)
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert cli.main(["run", "mnist-experiment", "-p", f"data_dir={mnist_folder}", "-p", "epochs=2",
                     "-p", "patch_scale=0.3", "-p", "max_iter=100"]) == 0
    capsys.readouterr()
    assert cli.main(["compare", "--experiment", "mnist", "--html", str(tmp_path / "compare.html")]) == 0
    printed = capsys.readouterr().out
    differ = printed.split("### Parameters that differ")[1].split("###")[0]
    # by KFP task name, the same in every run of the pipeline
    assert re.search(r"^\| train: epochs +\| +15\.0 \| +2\.0 \|$", differ, re.M), differ
    assert "patch_scale" in differ and "model_architecture" not in differ  # only what differs
    for label in rows:
        assert printed.count(f"| {label} ") >= 3, label  # in each rate's table
    page, requests, errors, _ = look_at(browser, (tmp_path / "compare.html").as_uri(), tmp_path / "compare.png")
    text = page.inner_text("body")
    page.close()
    assert errors == [] and len(requests) == 1 and "Parameters that differ" in text
    first = rows["baseline"]["rates"]["targeted_success_rate"]
    assert f"{first['successes']}/{first['count']}" in text


@pytest.mark.pipeline
def test_make_demo_on_a_users_three_class_folder(tmp_path):
    """`make demo DATA=<folder>` as a new user types it, on a plain folder of three class
    sub-folders of RGB JPEGs (no split folders): the demo picks a patch target the data has,
    trains on a fixed 80% of each class and tests on the other 20%, and every row comes out."""
    import os
    import subprocess
    from pathlib import Path

    from PIL import Image

    from advpatch.data.sources import embedded_digits

    folder = tmp_path / "my digits"
    x, y, _ = embedded_digits("train")
    for label, name in enumerate(["zero", "one", "two"]):
        (folder / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(y == label)[:40]):
            Image.fromarray(np.repeat(x[i], 3, axis=-1)).save(folder / name / f"{k:03d}.jpg", quality=95)
    env = {k: v for k, v in os.environ.items() if k not in (settings.ENV_TRACKING_URI, "MAKEFLAGS", "MFLAGS")}
    env[settings.ENV_OUTPUT_DIR] = str(tmp_path / "outputs")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["make", "-C", str(repo), "demo", f"DATA={folder}"], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "has 3 classes: the patch target is its last, 2 (zero), not the default 5" in done.stdout
    results = json.loads((tmp_path / "outputs" / "demo" / "results.json").read_text())
    rows = {r["label"]: r for r in results["comparison"]}
    # 8 of each class's 40 in the test split
    assert len(rows) == 3 + len(registered()) and rows["baseline"]["rates"]["clean_accuracy"]["count"] == 24
    assert rows["baseline"]["clean_accuracy"] > 0.8
    gen = next(s for s in results["steps"] if s["step"] == "gen_patch")
    assert gen["details"]["targets"] == ["zero"] * 3  # the sorted folders: one, two, zero



@pytest.mark.pipeline
def test_make_demo_twice_gives_the_same_results_and_the_same_artifact_bytes(demo_pair):
    """Same seed, same bytes, for the whole demo: `make demo` run twice (at once), each in a folder
    of its own as a new user's checkout: ``results.json`` the same but for what names the run and
    its times, and every artifact of every task the same bytes (models included: the save time is
    kept out of them; the report page but for its header line)."""
    from test_pipeline import _artifacts, _masked

    results = [json.loads((demo_pair["root"] / run / "outputs" / "demo" / "results.json").read_text())
               for run in ("first", "second")]
    assert results[0]["created"] != results[1]["created"]  # two runs indeed
    assert _masked(results[0]) == _masked(results[1])
    first, second = (_artifacts(demo_pair["root"] / run, "demo") for run in ("first", "second"))
    assert list(first) == list(second) and len(first) > 60
    header = re.compile(r"<div class=meta>[^<]*</div>")
    differ = []
    for name, a in first.items():
        b = second[name]
        if a.name in ("summary", "results", "executor_output.json"):  # they name the MLflow runs
            same = _masked(json.loads(a.read_text())) == _masked(json.loads(b.read_text()))
        elif a.name == "html":
            same = header.sub("", a.read_text()) == header.sub("", b.read_text())
        else:
            same = a.read_bytes() == b.read_bytes()
        if not same:
            differ.append(name)
    assert differ == []
    assert sum(name.endswith("model.keras") for name in first) == 3  # the baseline, patched and PGD models
