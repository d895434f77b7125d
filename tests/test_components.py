"""Components: generated from the parameter table and metadata.yaml, and each shell run on its own
with real artifact folders (as kubeflow/pipelines-components tests them), without the local runner."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from kfp import compiler, dsl

from advpatch import components, params
from advpatch.app import codegen

NAMES = list(params.STEP_PARAMS)


def _words(text):
    return " ".join((text or "").split())


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_generated_files_are_up_to_date():
    assert codegen.stale_files() == [], "run: make generate"


@pytest.mark.parametrize("change", [{"default": 12.0}, {"doc": "Passes over the data, any number."}])
def test_changing_the_table_alone_makes_the_generated_files_stale(monkeypatch, change):
    table = dict(params.STEP_PARAMS)
    table["train"] = tuple(p.but(**change) if p.name == "epochs" else p for p in params.STEP_PARAMS["train"])
    monkeypatch.setattr(params, "STEP_PARAMS", table)
    stale = {(p.parent.name, p.name) for p in codegen.stale_files()}
    assert stale == {("train", "component.py"), ("train", "README.md"), ("reference", "parameters.md")}


@pytest.mark.parametrize("name", NAMES)
def test_component_interface_is_the_table_and_the_metadata(name):
    spec = getattr(components, name).component_spec
    meta = codegen.read_component(codegen.components_dir() / name)
    table = [*params.STEP_PARAMS[name], *params.TRACKING]
    declared = [n for n, s in (spec.inputs or {}).items()
                if not s.type.startswith("system.") and s.type != "PipelineTaskFinalStatus"]
    assert declared == [p.name for p in table]  # exact names, in order, nothing else
    for p in table:
        got = spec.inputs[p.name]
        kinds = {int: "Integer", float: "Float", str: "String", bool: "Boolean", list: "List"}
        assert got.type == kinds[p.type], p.name
        assert got.default == p.default, p.name
        assert _words(got.description) == _words(codegen.describe(p)), p.name
    artifacts_in = {n: s for n, s in spec.inputs.items() if s.type.startswith("system.")}
    statuses = [io for io in meta.inputs if io.type == codegen.FINAL_STATUS]
    for io in statuses:  # an exit task's final status: KFP fills it in
        assert spec.inputs[io.name].type == "PipelineTaskFinalStatus"
        assert _words(spec.inputs[io.name].description) == _words(io.description)
    meta_artifacts = [io for io in meta.inputs if io not in statuses]
    assert list(artifacts_in) == [io.name for io in meta_artifacts if not io.optional] + \
        [io.name for io in meta_artifacts if io.optional]
    for io in meta_artifacts:
        assert artifacts_in[io.name].type == f"system.{codegen._inner(io.type)}@0.0.1"
        assert artifacts_in[io.name].optional == io.optional
        assert bool(artifacts_in[io.name].is_artifact_list) == io.type.startswith("List[")
        assert _words(artifacts_in[io.name].description) == _words(io.description)
    assert list(spec.outputs or {}) == [io.name for io in meta.outputs]
    for io in meta.outputs:  # KFP reads output descriptions from the docstring's Returns: section
        assert _words(spec.outputs[io.name].description) == _words(io.description), io.name
    assert _words(meta.summary) in _words(spec.description)


@pytest.mark.parametrize("name", list(params.PIPELINE_PARAMS))
def test_pipeline_interface_is_the_table(name):
    from advpatch.pipelines import PIPELINES

    spec = PIPELINES[name].component_spec
    assert list(spec.inputs) == [p.name for p in params.PIPELINE_PARAMS[name]]
    for p in params.PIPELINE_PARAMS[name]:
        assert spec.inputs[p.name].default == p.default
        assert _words(codegen.describe(p)) in _words(spec.inputs[p.name].description)
    assert spec.description  # the KFP UI shows it when a run is started


def test_a_readme_lists_every_parameter_by_exact_name():
    for name in NAMES:
        text = (codegen.components_dir() / name / "README.md").read_text()
        listed = re.findall(r"^\| `([a-z_0-9]+)` \| (?:int|float|str|bool|list) \|", text, re.M)
        assert listed == [p.name for p in params.STEP_PARAMS[name]], name
    train = (codegen.components_dir() / "train" / "README.md").read_text()
    assert all(f"| `{p.name}` |" in train for p in params.STEP_PARAMS["train"])
    assert len(params.STEP_PARAMS["train"]) == 15


@pytest.mark.parametrize("name", NAMES)
def test_each_components_example_pipeline_compiles(name, tmp_path):
    meta = codegen.read_component(codegen.components_dir() / name)
    scope = {}
    exec(compile(meta.example, f"{name}/metadata.yaml:example", "exec"), scope)
    compiler.Compiler().compile(scope["example"], str(tmp_path / "example.yaml"))
    assert name.replace("_", "-") in (tmp_path / "example.yaml").read_text()


# --------------------------------------------------------------------------- the shells, run directly
def _art(kind, path):
    return kind(uri=str(path))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every component's Python function, called in pipeline order on real folders."""
    root = tmp_path_factory.mktemp("shells")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVPATCH_OUTPUT_DIR", str(root / "outputs"))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    mp.setenv("ADVPATCH_PIPELINE_RUN_ID", "run-1")  # what a task finds in its environment
    out = {"root": root}
    try:
        for split, n in (("train", 120), ("test", 40)):
            arts = dict(dataset=_art(dsl.Dataset, root / split), metrics=dsl.Metrics(),
                        summary=_art(dsl.Artifact, root / f"{split}.json"))
            components.load_dataset.python_func(**arts, source="digits", split=split, max_examples=n)
            out[f"load_{split}"] = arts
        arts = dict(training_data=out["load_train"]["dataset"], testing_data=out["load_test"]["dataset"],
                    model=_art(dsl.Model, root / "model"), metrics=dsl.Metrics(),
                    summary=_art(dsl.Artifact, root / "train.json"))
        components.train.python_func(**arts, epochs=2.0, learning_rate=0.003, model_tag="shell", register_model=True,
                                     pgd_max_iter=2, experiment_name="shells", task_name="train")
        out["train"] = arts
        arts = dict(data=out["load_train"]["dataset"], model=out["train"]["model"],
                    patches=_art(dsl.Artifact, root / "patches"), metrics=dsl.Metrics(),
                    summary=_art(dsl.Artifact, root / "gen.json"))
        components.gen_patch.python_func(**arts, max_iter=3, num_patch=2, patch_target=3, patch_location="center",
                                         scale_min=0.3, scale_max=0.5)
        out["gen_patch"] = arts
        arts = dict(data=out["load_test"]["dataset"], patches=out["gen_patch"]["patches"],
                    patched_data=_art(dsl.Dataset, root / "patched"), metrics=dsl.Metrics(),
                    summary=_art(dsl.Artifact, root / "deploy.json"))
        components.deploy_patch.python_func(**arts, patch_location="center", patch_application_rate=0.5,
                                            output_tar_name="")
        out["deploy_patch"] = arts
        for name, settings in (("spatial_smoothing", {}), ("jpeg_compression", {"jpeg_compression_quality": 30}),
                               ("gaussian_augmentation", {"gaussian_augmentation_sigma": 0.2})):
            arts = dict(data=out["deploy_patch"]["patched_data"], defended_data=_art(dsl.Dataset, root / name),
                        metrics=dsl.Metrics(), summary=_art(dsl.Artifact, root / f"{name}.json"))
            getattr(components, name).python_func(**arts, **settings)
            out[name] = arts
        for condition, data in (("clean", out["load_test"]["dataset"]),
                                ("patched", out["jpeg_compression"]["defended_data"])):
            arts = dict(data=data, model=out["train"]["model"], metrics=dsl.Metrics(),
                        confusion=dsl.ClassificationMetrics(), confusion_patched=dsl.ClassificationMetrics(),
                        predictions=_art(dsl.Dataset, root / f"{condition}.csv"),
                        shard_result=_art(dsl.Artifact, root / f"shard-{condition}"),
                        summary=_art(dsl.Artifact, root / f"infer-{condition}.json"))
            components.infer.python_func(**arts, row="JPEG compression", experiment_name="shells",
                                         task_name=f"infer-{condition}")
            out[f"infer_{condition}"] = arts
        arts = dict(data=out["deploy_patch"]["patched_data"], model=out["train"]["model"], metrics=dsl.Metrics(),
                    confusion=dsl.ClassificationMetrics(), confusion_patched=dsl.ClassificationMetrics(),
                    predictions=_art(dsl.Dataset, root / "split.csv"), summary=_art(dsl.Artifact, root / "split.json"),
                    shard_result=_art(dsl.Artifact, root / "shard-split"))
        components.infer.python_func(**arts, row="baseline", condition="split", experiment_name="shells",
                                     task_name="infer-split")
        out["infer_split"] = arts
        arts = dict(bundle=_art(dsl.Artifact, root / "bundle.json"))
        components.gather.python_func(summaries=[out["infer_clean"]["summary"], out["infer_patched"]["summary"]],
                                      **arts, experiment_name="shells", task_name="gather")
        out["gather"] = arts
        arts = dict(results=_art(dsl.Artifact, root / "results.json"), table=_art(dsl.Markdown, root / "table.md"),
                    html=_art(dsl.HTML, root / "report.html"))
        slots = [out["train"]["summary"], out["gen_patch"]["summary"], out["deploy_patch"]["summary"],
                 out["gather"]["bundle"], out["infer_split"]["summary"]]
        components.report.python_func(**arts, **{f"summary_{i:02d}": s for i, s in enumerate(slots, 1)},
                                      **{f"summary_{i:02d}": None for i in range(6, 25)}, title="shells",
                                      experiment_name="shells")
        out["report"] = arts
        yield out
    finally:
        mp.undo()


def _summary(arts):
    return json.loads(open(arts["summary"].path).read())


def test_load_dataset_shell(chain):
    arts = chain["load_test"]
    assert arts["dataset"].metadata == {"num_examples": 40, "image_shape": [28, 28, 1],
                                        "class_names": [str(i) for i in range(10)]}
    assert arts["metrics"].metadata == {"num_examples": 40.0, "num_classes": 10.0}
    assert _summary(arts)["format"] == "advpatch-step-result" and _summary(arts)["step"] == "load_dataset"


def test_train_shell(chain):
    arts = chain["train"]
    assert (chain["root"] / "model" / "model.keras").is_file()
    assert arts["model"].metadata["architecture"] == "le_net"
    assert arts["model"].metadata["mlflow_model_uri"] == "models:/shells_shell_le_net/1"
    assert {"final_loss", "final_accuracy", "test_accuracy", "test_pgd_accuracy"} <= set(arts["metrics"].metadata)


def test_gen_and_deploy_patch_shells(chain):
    assert chain["gen_patch"]["patches"].metadata == {"format": "advpatch-patchset", "targets": ["3", "3"]}
    assert (chain["root"] / "patches" / "patchset.json").is_file()
    assert {"patch_0_final_loss", "mean_gen_targeted_success_rate"} <= set(chain["gen_patch"]["metrics"].metadata)
    deployed = chain["deploy_patch"]
    assert deployed["patched_data"].metadata == {"num_examples": 40, "num_patched": 20}
    assert deployed["metrics"].metadata["num_patched"] == 20.0


@pytest.mark.parametrize("name", ["spatial_smoothing", "jpeg_compression", "gaussian_augmentation"])
def test_defence_shells(chain, name):
    arts = chain[name]
    assert arts["defended_data"].metadata == {"num_examples": 40, "defence_applied": True}
    assert arts["metrics"].metadata["applied"] == 1.0 and arts["metrics"].metadata["num_changed"] > 0


def test_infer_shell_fills_kfp_metrics_confusion_and_predictions(chain):
    clean, patched = chain["infer_clean"], chain["infer_patched"]
    assert [(e["row"], e["condition"]) for e in _summary(clean)["evaluations"]] == [("JPEG compression", "clean")]
    # condition='auto': the data carries patched images
    assert [(e["row"], e["condition"]) for e in _summary(patched)["evaluations"]] == [("JPEG compression", "patched")]
    assert clean["confusion_patched"].metadata == {}  # only a split fills it
    matrix = clean["confusion"].metadata["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == [str(i) for i in range(10)]
    assert sum(map(sum, (r["row"] for r in matrix["rows"]))) == 40
    assert clean["metrics"].metadata["accuracy"] == pytest.approx(
        sum(r["row"][i] for i, r in enumerate(matrix["rows"])) / 40)
    rows = _csv_rows(patched["predictions"].path)
    assert len(rows) == 40 and {"patched", "patch_target", "source_index"} <= set(rows[0])
    assert "targeted_success_rate" in patched["metrics"].metadata


def test_infer_split_shell_fills_both_confusion_matrices(chain):
    """condition='split' on deploy_patch's output: the clean images and the patched ones, apart."""
    split = chain["infer_split"]
    evaluations = _summary(split)["evaluations"]
    assert [(e["row"], e["condition"]) for e in evaluations] == [("baseline", "clean"), ("baseline", "patched")]
    clean, patched = (sum(map(sum, (r["row"] for r in split[k].metadata["confusionMatrix"]["rows"])))
                      for k in ("confusion", "confusion_patched"))
    assert clean + patched == 40 and clean == evaluations[0]["counts"]["accuracy"][1]
    assert patched == evaluations[1]["counts"]["accuracy"][1]
    k, n = evaluations[1]["counts"]["targeted_success_rate"]  # the images whose label is not the target
    rows = _csv_rows(split["predictions"].path)
    assert n == sum(r["patched"] == "True" and r["label"] != r["patch_target"] for r in rows)
    assert evaluations[1]["metrics"]["targeted_success_rate"] == k / n


def test_gather_shell_bundles_the_summaries_in_order(chain):
    bundle = json.loads(Path(chain["gather"]["bundle"].path).read_text())
    assert bundle["format"] == "advpatch-step-results"
    assert [s["evaluations"][0]["condition"] for s in bundle["results"]] == ["clean", "patched"]


def test_close_run_shell_takes_the_final_status(chain):
    import mlflow
    from kfp.dsl import PipelineTaskFinalStatus

    status = PipelineTaskFinalStatus(state="FAILED", pipeline_job_resource_name="run-1", pipeline_task_name="p",
                                     error_code=1, error_message="a step failed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{chain['root'] / 'outputs' / 'mlflow.db'}")
        mp.setenv("ADVPATCH_PIPELINE_RUN_ID", "run-1")
        components.close_run.python_func(status=status, experiment_name="shells", task_name="close-run")
        mlflow.set_tracking_uri(f"sqlite:///{chain['root'] / 'outputs' / 'mlflow.db'}")
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name("shells")
        (parent,) = client.search_runs([exp.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert parent.info.status == "FAILED"  # the report had marked it FINISHED; the exit task has the last word
    assert {c.data.tags["kfp.task_name"] for c in children} >= {"train", "infer-clean", "infer-patched", "infer-split"}


def test_report_shell_pairs_rows_by_field(chain):
    results = json.loads(Path(chain["report"]["results"].path).read_text())
    # the gather bundle expands in place, in its order
    assert [s["step"] for s in results["steps"]] == ["train", "gen_patch", "deploy_patch", "infer", "infer", "infer"]
    jpeg, baseline = results["comparison"]
    assert jpeg["label"] == "JPEG compression" and baseline["label"] == "baseline"
    assert jpeg["clean_accuracy"] == chain["infer_clean"]["metrics"].metadata["accuracy"]
    assert jpeg["targeted_success_rate"] == chain["infer_patched"]["metrics"].metadata["targeted_success_rate"]
    table = Path(chain["report"]["table"].path).read_text()
    assert "| JPEG compression" in table and "| baseline" in table
    page = Path(chain["report"]["html"].path).read_text()
    assert page.startswith("<!DOCTYPE html>") and "JPEG compression" in page and "<script" not in page


def test_the_report_page_as_a_person_sees_it(chain, browser, tmp_path):
    """The report step's HTML page in a real browser: it loads nothing from anywhere, runs no
    script, every image decodes, it fits the window, and it shows the rates of results.json."""
    from conftest import look_at

    from advpatch.report import format_rate

    page_file = chain["report"]["html"].path
    results = json.loads(Path(chain["report"]["results"].path).read_text())
    page, requests, errors, pixels = look_at(browser, f"file://{page_file}", tmp_path / "report.png")
    try:
        assert requests == [f"file://{page_file}"]  # pictures are inline data: URIs; no CDN, no font
        assert errors == []  # no CSP violation, no broken image
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
        # rates chart, 2 patches, each evaluation's samples, confusion matrices, training curves
        samples = sum(len(e["samples"]) for e in results["evaluations"])
        assert samples >= 12 and len(images) == 1 + 2 + samples + 1 + 1
        assert all(w > 0 and h > 0 for w, h in images)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        csp = page.get_attribute("meta[http-equiv='Content-Security-Policy']", "content")
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert page.inner_text("h1") == "shells"
        text = page.inner_text("body")
        for row in results["comparison"]:
            for name, r in row["rates"].items():
                assert f"{format_rate(r)} {r['successes']}/{r['count']}" in text, (row["label"], name)
    finally:
        page.close()
    # not a blank page: most of it is white, but charts and pictures cover a good share
    assert pixels.shape[0] > 1500 and pixels.shape[1] == 1280
    inked = (pixels.min(axis=2) < 200).mean()
    assert 0.05 < inked < 0.6, inked
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200  # colours, greys, not one flat fill


def test_one_registry_of_components_everything_else_derived_from_it():
    """A component is its folder's metadata.yaml (a defence's is generated from its class): the
    package's list of components, the steps, the parameter table, the wheel's packages, the GPU
    placement and the cache settings all agree with it."""
    from advpatch import components, params, steps
    from advpatch.app.placement import GPU_STEPS_DEFAULT

    assert set(components.__all__) == set(steps.STEPS) == set(params.STEP_PARAMS)
    assert GPU_STEPS_DEFAULT == {n for n in components.__all__ if components.facts(n).get("gpu")} == {
        "train", "init_model", "import_model", "gen_patch", "derandomized_smoothing", "patch_cleanser"}
    assert components.never_cached() == {"report", "close_run", "collect"}
    for name in components.__all__:
        assert components.facts(name)["name"] == name
