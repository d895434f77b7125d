"""The bad-input battery: every way a user can get a parameter, a data source, a model or a patch
set wrong, through the command line and through each component, as one table.

Each case must end in one clear line (an ``AdvpatchError`` naming the parameter or file, the
value and what is allowed), a non-zero exit where a process runs, no traceback as the last thing
the user sees, and no artifact, half-written or not. Parameter cases must fail before TensorFlow
is imported. The figures (cases, clear errors, slowest seconds to fail, artifacts left) are
printed and, with ``ADVPATCH_BATTERY_REPORT=path``, written there as JSON.

Component cases call each component's own function (what KFP's executor calls) in a fresh
Python, param cases first; one case per component also goes through the real executor command
taken from the component's compiled YAML (``sh -ec ... python3 -m kfp.dsl.executor_main``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from advpatch import params

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS_WITH_PARAMS = ("load_dataset", "train", "init_model", "import_model", "gen_patch", "deploy_patch",
                          "spatial_smoothing", "jpeg_compression", "gaussian_augmentation", "derandomized_smoothing",
                          "patch_cleanser", "infer", "report")
KFP_OUTPUTS = ("metrics", "confusion", "confusion_patched", "summary")


# ------------------------------------------------------------------ bad values, from the parameter table
def bad_values(p: params.Param) -> list:
    """Values ``p``'s rule refuses: out of range on each side, of the wrong type, not a choice,
    not matching the pattern, non-finite, a fraction for an integer."""
    from advpatch.params.rules import Choices, Interval, Pattern

    if p.type is bool:
        return ["yes", 1]
    if p.type is list:
        out = [[], [1.0, 1.0]]
        if isinstance(p.rule, Interval) and p.rule.low is not None:
            out.append([p.rule.low - 1])
        return out
    if p.type is str:
        if isinstance(p.rule, Choices):
            return [f"no-such-{p.name}", 7]
        if isinstance(p.rule, Pattern):
            candidates = ["", " ", "a b", "../up", "bad name!", "x" * 3 + "/"]
            return [next(c for c in candidates if not p.rule.contains(c) and not (p.optional and c == "")), 7]
        return [7]
    rule = p.rule if isinstance(p.rule, Interval) else Interval(integer=p.type is int)
    out = ["ten", math.nan]
    if rule.low is not None:
        out.append(rule.low if rule.low_open else rule.low - 1)
    if rule.high is not None:
        out.append(rule.high if rule.high_open else rule.high + 1)
    if p.type is int or rule.integer:
        out.append(1.5)
    return out


# ------------------------------------------------------------------ files the cases hand over
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 1-bit pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _folder(root: Path, classes=("0", "1"), per_class=3, size=12, splits=("training", "testing")) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                from PIL import Image

                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def make_sources(root: Path) -> dict:
    """Every bad data source of the battery, by name."""
    s = {}
    s["missing"] = root / "no-such-folder"
    s["empty"] = root / "empty"
    s["empty"].mkdir(parents=True)
    s["no_test_split"] = _folder(root / "no-test", splits=("training",))
    s["one_class"] = _folder(root / "one-class", classes=("7",))
    s["truncated"] = _folder(root / "truncated")
    png = s["truncated"] / "training" / "1" / "2.png"
    png.write_bytes(png.read_bytes()[:60])
    s["zero_byte"] = _folder(root / "zero-byte")
    (s["zero_byte"] / "testing" / "0" / "1.png").write_bytes(b"")
    s["not_image"] = _folder(root / "not-image")
    (s["not_image"] / "training" / "0" / "notes.png").write_text("these are my notes, not a picture\n")
    s["bomb"] = _folder(root / "bomb")
    (s["bomb"] / "training" / "1" / "0.png").write_bytes(_png_header(40000, 40000))
    s["mixed_sizes"] = _folder(root / "mixed")
    from PIL import Image

    Image.fromarray(np.zeros((20, 16), np.uint8)).save(s["mixed_sizes"] / "testing" / "1" / "2.png")
    s["idx_magic"] = root / "idx"
    for split, prefix in (("training", "train"), ("testing", "t10k")):
        d = s["idx_magic"] / split
        d.mkdir(parents=True)
        (d / f"{prefix}-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03" + struct.pack(">III", 2, 4, 4) + bytes(32))
        (d / f"{prefix}-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes([0, 1]))
    x = np.random.default_rng(1).random((6, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    x_nan = x.copy()
    x_nan[2, 3, 3] = np.nan
    np.savez(root / "nan.npz", x=x_nan, y=y)
    s["npz_nan"] = root / "nan.npz"
    np.savez(root / "strings.npz", x=np.full((6, 8, 8), "a"), y=y)
    s["npz_dtype"] = root / "strings.npz"
    np.savez(root / "labels.npz", x=x, y=y - 0.5)
    s["npz_labels"] = root / "labels.npz"
    np.savez(root / "object.npz", x=np.array([x[0], "x"], dtype=object), y=y[:2])
    s["npz_pickle"] = root / "object.npz"
    return s


# name, source key, extra -p arguments, what the one line must say
SOURCE_CASES = [
    ("data: missing", "missing", [], "does not exist"),
    ("data: empty folder", "empty", [], "has no class subfolders"),
    ("data: no test split", "no_test_split", [], "no test split folder"),
    ("data: one class", "one_class", [], "at least 2 classes"),
    ("data: truncated image", "truncated", [], "training/1/2.png"),
    ("data: zero-byte image", "zero_byte", [], "testing/0/1.png"),
    ("data: non-image file", "not_image", [], "notes.png"),
    ("data: decompression bomb", "bomb", [], "decompression bomb"),
    ("data: mixed sizes, no image_size", "mixed_sizes", ["image_size=0"], "set image_size"),
    ("data: IDX wrong magic", "idx_magic", [], "is not an IDX file"),
    ("data: .npz with NaN", "npz_nan", [], "NaN"),
    ("data: .npz of strings", "npz_dtype", [], "dtype <U1"),
    ("data: .npz with fractional labels", "npz_labels", [], "labels must be whole numbers"),
    ("data: .npz of Python objects", "npz_pickle", [], "Object arrays cannot be loaded"),
]


def _cli_param_cases(pipeline: str) -> list:
    """Every pipeline parameter's bad values as command-line text, an unknown name, a rule between two."""
    cases = []
    for p in params.PIPELINE_PARAMS[pipeline]:
        for value in bad_values(p):
            if (p.type is str and not isinstance(value, str)) or (p.type is list and value == []):
                continue  # the command line's text is always a string; an empty list is "name="
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower() \
                if isinstance(value, bool) else str(value)
            cases.append((f"cli: {p.name}={text}", [f"{p.name}={text}"], p.name))
    cases += [("cli: unknown parameter", ["no_such_parameter=1"], "no_such_parameter is not a parameter of"),
              ("cli: -p without =", ["epochs"], "-p takes NAME=VALUE"),
              ("cli: scale_min above scale_max", ["scale_min=0.6", "scale_max=0.5"], "scale_min"),
              ("cli: patch target the data lacks", ["patch_target=12"], "patch_target")]
    return cases


# ------------------------------------------------------------------ the command line
def _files_under(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


S3_VARIABLES = ("ADVPATCH_S3_ENDPOINT", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY")


def run_cli(argv: list, cwd: Path, env: Optional[dict] = None) -> dict:
    """``advpatch ...`` as a user runs it, in a fresh process: exit code, last line, seconds, files left.
    ``env``: variables to set (a value of None: to unset)."""
    started = time.monotonic()
    environment = {**os.environ, "ADVPATCH_OUTPUT_DIR": str(cwd / "outputs"), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "advpatch.app.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          env={k: v for k, v in environment.items() if v is not None}, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return {"rc": proc.returncode, "last": lines[-1] if lines else "", "traceback": "Traceback" in proc.stderr,
            "seconds": time.monotonic() - started, "left": _files_under(cwd)}


# ------------------------------------------------------------------ components, in a fresh Python
def _component_call(case: dict) -> dict:
    """One component case, in this process: the component's function with KFP artifact objects."""
    from kfp import dsl

    from advpatch import components
    from advpatch.errors import AdvpatchError

    out = Path(case["out"])
    out.mkdir(parents=True)
    fn = getattr(components, case["component"]).python_func
    kwargs = dict(case["params"])
    for name, path in case["inputs"].items():
        kwargs[name] = dsl.Artifact(name=name, uri=path) if path else None
    for name in case["outputs"]:
        kind = {"metrics": dsl.Metrics, "confusion": dsl.ClassificationMetrics,
                "confusion_patched": dsl.ClassificationMetrics}.get(name, dsl.Artifact)
        kwargs[name] = kind(name=name, uri=str(out / name))
    started = time.monotonic()
    try:
        fn(**kwargs)
        error, kind = "", ""
    except AdvpatchError as e:
        error, kind = str(e), "clear"
    except Exception as e:
        error, kind = f"{type(e).__name__}: {e}", "unclear"
    return {"id": case["id"], "kind": kind, "error": error, "seconds": time.monotonic() - started,
            "left": _files_under(out), "tensorflow": "tensorflow" in sys.modules}


def run_components(cases: list, tmp: Path) -> list:
    """The cases in one fresh Python (so 'before TensorFlow' means something), results in order."""
    spec, answer = tmp / "cases.json", tmp / "answers.json"
    spec.write_text(json.dumps(cases))
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_bad_input as t; "
            f"json.dump([t._component_call(c) for c in json.load(open({str(spec)!r}))], open({str(answer)!r}, 'w'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp, timeout=600,
                   env={**os.environ, "ADVPATCH_OUTPUT_DIR": str(tmp / "outputs"),
                        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"})
    return json.loads(answer.read_text())


def component_artifacts(name: str) -> tuple:
    """(inputs, outputs) of a component: its artifact parameter names, KFP's own outputs last."""
    import inspect

    from advpatch import components

    inputs, outputs = [], []
    for pname, p in inspect.signature(getattr(components, name).python_func).parameters.items():
        text = str(p.annotation)
        if "OutputAnnotation" in text or "Output[" in text:
            outputs.append(pname)
        elif "InputAnnotation" in text or "Input[" in text:
            inputs.append(pname)
    return inputs, outputs


# ------------------------------------------------------------------ fixtures: good artifacts to spoil
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small train and test dataset (2 classes of digits, 28x28), a LeNet for them, a patch set."""
    from advpatch import models, patches
    from advpatch.data.dataset import Dataset
    from advpatch.data.sources import import_dataset

    root = tmp_path_factory.mktemp("good")
    folder = _folder(root / "digits", per_class=4, size=28)
    import_dataset(str(folder), root / "train", split="train")
    import_dataset(str(folder), root / "test", split="test")
    ten = import_dataset("digits", root / "test10", split="test", max_examples=20)
    for name, classes in (("model", ["0", "1"]), ("model10", [str(i) for i in range(10)])):
        models.save_model(models.build_model("le_net", (28, 28, 1), len(classes)),
                          models.ModelInfo("le_net", (28, 28, 1), classes), root / name)
    for name, shape in (("patches", (28, 28, 1)), ("patches_rgb", (32, 32, 3))):
        patches.PatchSet(np.full((1, *shape), 0.5, np.float32), patches.make_mask(shape[0], "square")[None],
                         np.array([1], np.int32), ["0", "1"], shape).save(root / name)
    models.build_model("le_net", (32, 32, 3), 2).save(root / "rgb32.keras")
    assert len(Dataset(root / "test")) and ten.num_examples == 20
    return root


GOOD_INPUTS = {"train": {"training_data": "train", "testing_data": "test"}, "init_model": {"testing_data": "test"},
               "import_model": {"testing_data": "test"}, "gen_patch": {"data": "train", "model": "model"},
               "deploy_patch": {"data": "test", "patches": "patches"}, "infer": {"data": "test", "model": "model"},
               "derandomized_smoothing": {"training_data": "train", "testing_data": "test"},
               "patch_cleanser": {"model": "model", "training_data": "train", "testing_data": "test"},
               **{d: {"data": "test"} for d in ("spatial_smoothing", "jpeg_compression", "gaussian_augmentation")}}
FIGURES: dict = {}


def _case(tmp: Path, good: Path, case_id: str, component: str, parameters: dict, inputs: dict) -> dict:
    names_in, names_out = component_artifacts(component)
    given = {k: str(good / v) for k, v in GOOD_INPUTS.get(component, {}).items()}
    given.update({k: str(v) for k, v in inputs.items()})
    out = tmp / "out" / f"{len(case_id)}-{abs(hash(case_id))}"
    return {"id": case_id, "component": component, "params": parameters, "out": str(out),
            "inputs": {k: given.get(k, "") for k in names_in}, "outputs": names_out}


def _record(surface: str, results: list) -> None:
    """The battery's figures for one surface, printed and (ADVPATCH_BATTERY_REPORT) written."""
    FIGURES[surface] = {"cases": len(results), "clear_errors": sum(r["clear"] for r in results),
                        "slowest_seconds_to_fail": round(max(r["seconds"] for r in results), 2),
                        "artifacts_left": sum(len(r["left"]) for r in results)}
    print(json.dumps({surface: FIGURES[surface]}))
    if os.environ.get("ADVPATCH_BATTERY_REPORT"):
        Path(os.environ["ADVPATCH_BATTERY_REPORT"]).write_text(json.dumps(FIGURES, indent=1))


def _judge(results: list) -> list:
    """The cases that broke a promise, with why."""
    return [r for r in results if not r["clear"] or r["left"]]


@pytest.mark.slow  # a hundred fresh `advpatch` processes
def test_the_command_line_refuses_every_bad_input_in_one_line_before_any_task(tmp_path, good):
    sources = make_sources(tmp_path / "sources")
    (tmp_path / "notes.keras").write_text("not a model\n")
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF but not really")
    runs = [(name, ["run", "mnist-patch", "-p", f"data_dir={sources[key]}", *[a for x in extra for a in ("-p", x)]],
             expect) for name, key, extra, expect in SOURCE_CASES]
    runs += [(name, ["run", "mnist-patch", *[a for x in args for a in ("-p", x)]], expect)
             for name, args, expect in _cli_param_cases("mnist-patch")]
    runs += [("cli: demo on a truncated image", ["demo", "--data", str(sources["truncated"])], "training/1/2.png"),
             ("cli: no such pipeline", ["run", "mnist-pach"], "pipeline must be one of")]
    own = ["run", "custom-model-patch", "-p", f"data_dir={good / 'digits'}", "-p", "model_file="]
    runs += [("cli: model file missing", [*own[:-1], own[-1] + str(tmp_path / "none.keras")], "model_file"),
             ("cli: model file not a Keras archive", [*own[:-1], own[-1] + str(tmp_path / "notes.keras")],
              "notes.keras"),
             ("cli: model for 32x32 images, data 28x28", [*own[:-1], own[-1] + str(good / "rgb32.keras")],
              "takes 32x32x3 images but data_dir's are 28x28x3"),
             ("cli: weights file missing", ["run", "imagenet-patch", "-p", f"weights={tmp_path / 'none.h5'}"],
              "does not exist"),
             ("cli: weights file not HDF5", ["run", "imagenet-patch", "-p", f"weights={tmp_path / 'weights.h5'}"],
              "not an HDF5 file")]
    # what the environment must give a run, known before any task (S3 for s3:// locations, a tracking URI MLflow takes)
    no_s3 = dict.fromkeys(S3_VARIABLES)
    envs = {"cli: s3 data, no S3 endpoint": no_s3, "cli: s3 data, no S3 credentials": {
        **no_s3, "ADVPATCH_S3_ENDPOINT": "http://127.0.0.1:9"}, "cli: s3 endpoint not a URL": {
        **no_s3, "ADVPATCH_S3_ENDPOINT": "seaweedfs:8333", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
        "cli: MLflow URI of no known form": {"MLFLOW_TRACKING_URI": "localhost:5000"},
        "cli: sqlite URI without its path": {"MLFLOW_TRACKING_URI": "sqlite://mlflow.db"}}
    runs += [("cli: s3 data, no S3 endpoint", ["run", "mnist-patch", "-p", "data_dir=s3://mlpipeline/shared/mnist"],
              "data_dir=s3://mlpipeline/shared/mnist needs S3: no S3 endpoint configured"),
             ("cli: s3 data, no S3 credentials", ["run", "imagenet-patch", "-p", "weights=s3://models/resnet50.h5"],
              "weights=s3://models/resnet50.h5 needs S3: S3 credentials missing"),
             ("cli: s3 endpoint not a URL", ["demo", "--data", "s3://mlpipeline/shared/mnist"],
              "must be http(s)://host[:port], got 'seaweedfs:8333'"),
             ("cli: MLflow URI of no known form", ["run", "mnist-patch"], "MLFLOW_TRACKING_URI must be"),
             ("cli: sqlite URI without its path", ["demo"], "got 'sqlite://mlflow.db'")]
    results = []
    for i, (name, argv, expect) in enumerate(runs):
        cwd = tmp_path / "cli" / str(i)
        cwd.mkdir(parents=True)
        got = run_cli(argv, cwd, envs.get(name))
        got["clear"] = (got["rc"] == 2 and got["last"].startswith("advpatch: error: ") and not got["traceback"]
                        and expect.lower() in got["last"].lower())
        results.append({"id": name, **got})
    _record("command line", results)
    assert len(results) >= 70
    assert _judge(results) == []


def test_each_component_refuses_every_bad_parameter_before_tensorflow(tmp_path, good):
    cases = []
    for component in COMPONENTS_WITH_PARAMS:
        for p in params.STEP_PARAMS[component]:
            for value in bad_values(p):
                cases.append(_case(tmp_path, good, f"{component}: {p.name}={value!r}", component, {p.name: value}, {}))
    cases.append(_case(tmp_path, good, "gen_patch: scale_min above scale_max", "gen_patch",
                       {"scale_min": 0.6, "scale_max": 0.5}, {}))
    answers = run_components(cases, tmp_path)
    for case, got in zip(cases, answers):
        name = case["id"].split(": ", 1)[1].split("=")[0]
        got["clear"] = got["kind"] == "clear" and "\n" not in got["error"] and name.split(" ")[0] in got["error"]
    _record("components: parameters", answers)
    assert len(answers) >= 250
    assert _judge(answers) == []
    assert [a["id"] for a in answers if a["tensorflow"]] == []  # every one failed before TensorFlow was imported


def _spoiled(tmp: Path, good: Path) -> dict:
    """Bad artifacts made from the good ones."""
    from advpatch.data.sources import import_dataset

    bad = tmp / "spoiled"
    bad.mkdir()
    out = {"missing": bad / "nothing-here"}
    import_dataset(str(_folder(bad / "one-class-folder", classes=("3",), size=28)), bad / "one_class", split="train")
    out["one_class"] = bad / "one_class"
    for kind, manifest in (("dataset", "dataset.json"), ("model", "model.json"), ("patches", "patchset.json")):
        src = good / ("train" if kind == "dataset" else kind)
        for how in ("garbage", "version"):
            dest = bad / f"{kind}_{how}"
            shutil.copytree(src, dest)
            if how == "garbage":
                (dest / manifest).write_bytes(b"\x89\x00not json{")
            else:
                meta = json.loads((dest / manifest).read_text())
                meta["version"] = 99
                (dest / manifest).write_text(json.dumps(meta))
            out[f"{kind}_{how}"] = dest
    shutil.copytree(good / "model", bad / "keras_garbage")
    (bad / "keras_garbage" / "model.keras").write_bytes(b"PK\x03\x04 this is not a zip")
    out["keras_garbage"] = bad / "keras_garbage"
    shutil.copytree(good / "patches", bad / "patch_arrays")
    arrays = next(p for p in (bad / "patch_arrays").iterdir() if p.suffix == ".npz")
    arrays.write_bytes(arrays.read_bytes()[:100])
    out["patch_arrays"] = bad / "patch_arrays"
    (bad / "notes.keras").write_text("not a model\n")
    out["notes_keras"] = bad / "notes.keras"
    (bad / "summary.json").write_text("{not json")
    out["summary"] = bad / "summary.json"
    return out


def _unsafe_archives_in_mlflow(tmp: Path) -> dict:
    """MLflow runs (in the store the component cases use) each holding a ``data.tar`` with one
    unsafe member beside a dataset folder: a ``../`` path, a symbolic link, a hard link."""
    import io

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.create_experiment("battery", artifact_location=(tmp / "mlflow-artifacts").as_uri())
    runs = {}
    for name in ("a ../ member", "a symbolic link", "a hard link"):
        archive = tmp / "tars" / name.replace(" ", "-").replace("/", "") / "data.tar"
        archive.parent.mkdir(parents=True)
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo("data/dataset.json")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
            bad = tarfile.TarInfo("data/../../escaped.txt" if "../" in name else "data/link")
            if "symbolic" in name:
                bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            elif "hard" in name:
                bad.type, bad.linkname = tarfile.LNKTYPE, "/etc/passwd"
            else:
                bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil") if bad.isfile() else None)
        run = client.create_run(experiment)
        client.log_artifact(run.info.run_id, str(archive))
        runs[name] = run.info.run_id
    return runs


def test_each_component_refuses_bad_data_models_and_patch_sets_and_leaves_nothing(tmp_path, good):
    bad = _spoiled(tmp_path, good)
    sources = make_sources(tmp_path / "sources")
    table = [  # component, what is wrong, parameters, inputs, what the line must name
        ("train", "training data missing", {}, {"training_data": bad["missing"]}, "nothing-here"),
        ("train", "training data of one class", {}, {"training_data": bad["one_class"]}, "at least 2 classes"),
        ("train", "dataset manifest not JSON", {}, {"training_data": bad["dataset_garbage"]}, "dataset.json"),
        ("train", "dataset of another format version", {}, {"training_data": bad["dataset_version"]}, "version"),
        ("train", "test data of other classes", {}, {"testing_data": good / "test10"}, "does not match"),
        ("derandomized_smoothing", "training data of one class", {}, {"training_data": bad["one_class"]},
         "at least 2 classes"),
        ("infer", "model missing", {}, {"model": bad["missing"]}, "nothing-here"),
        ("infer", "model manifest not JSON", {}, {"model": bad["model_garbage"]}, "model.json"),
        ("infer", "model of another format version", {}, {"model": bad["model_version"]}, "advpatch-model v1"),
        ("infer", "model with 10 classes on 2-class data", {}, {"model": good / "model10"}, "10 classes"),
        ("infer", "model file corrupt", {}, {"model": bad["keras_garbage"]}, "model.keras"),
        ("infer", "a model where the data goes", {}, {"data": good / "model"}, "dataset.json"),
        ("infer", "neither model nor model_uri", {}, {"model": ""}, "give exactly one model"),
        ("gen_patch", "patch target the data lacks", {"patch_target": 5}, {}, "patch_target"),
        ("gen_patch", "model with 10 classes on 2-class data", {}, {"model": good / "model10"}, "10 classes"),
        ("patch_cleanser", "model with 10 classes on 2-class data", {}, {"model": good / "model10"}, "10 classes"),
        ("deploy_patch", "patch set missing", {}, {"patches": bad["missing"]}, "nothing-here"),
        ("deploy_patch", "patch set manifest not JSON", {}, {"patches": bad["patches_garbage"]}, "patchset.json"),
        ("deploy_patch", "patch set of another version", {}, {"patches": bad["patches_version"]}, "version"),
        ("deploy_patch", "patch arrays cut short", {}, {"patches": bad["patch_arrays"]}, "patches.npz"),
        ("deploy_patch", "RGB 32x32 patches on grey 28x28 images", {}, {"patches": good / "patches_rgb"}, "3 channels"),
        ("jpeg_compression", "data missing", {}, {"data": bad["missing"]}, "nothing-here"),
        ("spatial_smoothing", "data manifest not JSON", {}, {"data": bad["dataset_garbage"]}, "dataset.json"),
        ("import_model", "model file missing", {"model_file": str(bad["missing"])}, {}, "model_file"),
        ("import_model", "model file not a Keras archive", {"model_file": str(bad["notes_keras"])}, {}, "notes.keras"),
        ("init_model", "test data without ImageNet's classes", {"model_architecture": "resnet50"}, {}, "1,000 classes"),
        ("init_model", "weights file missing", {"model_architecture": "resnet50", "weights": str(bad["missing"])},
         {"testing_data": good / "test"}, "1,000 classes"),
        ("report", "a summary that is not JSON", {}, {"summary_01": bad["summary"]}, "summary.json"),
    ]
    for name, run_id in _unsafe_archives_in_mlflow(tmp_path).items():
        table.append(("load_dataset", f"archive with {name}", {"source": f"mlflow-run://{run_id}/data.tar"}, {},
                      "unsafe or foreign entry"))
    splits = {"no_test_split": "test", "zero_byte": "test", "mixed_sizes": "test"}
    for name, key, extra, expect in SOURCE_CASES:
        if key != "one_class":  # one class is a fine test set: training refuses it (above)
            table.append(("load_dataset", name, {"source": str(sources[key]), "split": splits.get(key, "train"),
                                                 **({"image_size": 0} if extra else {})}, {}, expect))
    cases = [_case(tmp_path, good, f"{c}: {what}", c, p, i) for c, what, p, i, _ in table]
    answers = run_components(cases, tmp_path)
    for (_, _, _, _, expect), got in zip(table, answers):
        got["clear"] = got["kind"] == "clear" and "\n" not in got["error"] and expect.lower() in got["error"].lower()
    _record("components: data, models, patch sets", answers)
    assert _judge(answers) == []
    assert not list(tmp_path.rglob("escaped.txt"))  # refused before anything was extracted


def _executor_command(component: str, tmp: Path) -> list:
    """The command KFP runs for ``component``'s task, from its compiled YAML."""
    import yaml
    from kfp import compiler

    from advpatch import components

    path = tmp / f"{component}.yaml"
    compiler.Compiler().compile(getattr(components, component), str(path))
    (executor,) = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"].values()
    return executor["container"]["command"] + executor["container"]["args"]


def _typed_bad_value(p: params.Param):
    """A bad value of the parameter's own type (KFP's API checks types before a task starts)."""
    for v in bad_values(p):
        if (p.type is str and isinstance(v, str)) or (p.type is list and isinstance(v, list)):
            return v
        if p.type in (int, float) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return v
    raise AssertionError(f"no bad value of type {p.type_name} for {p.name}")


def test_a_kfp_task_fails_on_bad_input_with_its_last_line_saying_why(tmp_path, good):
    """What a cluster runs, for one bad parameter of each component: the executor command from the
    compiled YAML (``sh -ec ... python3 -m kfp.dsl.executor_main``) with an executor input as
    KFP's driver writes it. The task exits non-zero, its log ends with the one clear line (the
    traceback above it), and no output artifact or executor output is written."""
    results = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "ADVPATCH_OUTPUT_DIR": str(tmp_path / "outputs"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    ruled = [c for c in COMPONENTS_WITH_PARAMS if any(p.rule is not None for p in params.STEP_PARAMS[c])]
    for component in ruled:
        p = next(p for p in params.STEP_PARAMS[component] if p.type is not bool and p.rule is not None)
        value = _typed_bad_value(p)
        case = _case(tmp_path, good, f"{component}: {p.name}={value!r}", component, {p.name: value}, {})
        out = Path(case["out"])
        out.mkdir(parents=True)

        def artifacts(names, where, out=out):
            return {n: {"artifacts": [{"name": n, "uri": str(Path(where[n]) if where is not None else out / n),
                                       "type": {"schemaTitle": "system.Artifact"}, "metadata": {}}]}
                    for n in names if where is None or where.get(n)}

        executor_input = {"inputs": {"parameterValues": {p.name: value, "task_name": f"{component}-task"},
                                     "artifacts": artifacts(case["inputs"], case["inputs"])},
                          "outputs": {"artifacts": artifacts(case["outputs"], None),
                                      "outputFile": str(out / "executor_output.json")}}
        command = [json.dumps(executor_input) if a == "{{$}}" else a for a in _executor_command(component, tmp_path)]
        started = time.monotonic()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        seconds = time.monotonic() - started
        log = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        last = log[-1] if log else ""
        results.append({"id": case["id"], "rc": proc.returncode, "last": last, "seconds": seconds,
                        "left": _files_under(out),
                        "clear": proc.returncode != 0
                        and last.startswith(f"advpatch: error: {component}: {p.name} must be")
                        and "Traceback" in proc.stderr})  # the full story stays in the log, above the line
    _record("KFP executor", results)
    assert len(results) == len(ruled) >= 12
    assert _judge(results) == []
