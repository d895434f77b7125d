"""Evaluation shards (eval_shards): a shard of deploy_patch patches each image as the whole does, a
defence and infer treat a shard's images as the whole's, and merge_evaluations gives the unsharded
evaluation to the bit."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from advpatch import patches, steps
from advpatch.data.dataset import Dataset
from advpatch.data.writer import write_dataset
from advpatch.params import ParameterError
from advpatch.steps import _shards
from advpatch.steps._evaluations import evaluate

CLASSES = [str(i) for i in range(10)]


def _as_json(evaluations):
    return json.dumps([dataclasses.asdict(e) for e in evaluations], sort_keys=True)


@pytest.mark.parametrize("n, count", [(10, 3), (7, 7), (359, 4)])
def test_shard_bounds_cover_the_rows_once_in_order(n, count):
    spans = [_shards.bounds(n, i, count) for i in range(count)]
    assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1
    with pytest.raises(ParameterError, match="shard_index must be smaller than shard_count"):
        _shards.bounds(n, count, count)
    aligned = [_shards.bounds(n, i, count, 2) for i in range(count)] if n >= 2 * count else []
    assert all(a % 2 == 0 for a, _ in aligned)
    assert _shards.bounds(359, 1, 2, 256) == (256, 359)
    with pytest.raises(ParameterError, match="shard_count=3 is more than the 2 block"):
        _shards.bounds(359, 0, 3, 256)


def test_batches_of_a_slice_are_cut_where_the_whole_is_cut(tmp_path):
    x = np.arange(23 * 4, dtype=np.uint8).reshape(23, 2, 2, 1)
    write_dataset(tmp_path / "d", x, np.arange(23) % 10, CLASSES, shard_bytes=20)  # 5 images a file
    data = Dataset(tmp_path / "d")
    assert [len(b["y"]) for b in data.batches(4)] == [4, 4, 4, 4, 4, 3]
    sizes = [len(b["y"]) for b in data.batches(4, 6, 17)]
    assert sizes == [2, 4, 4, 1]  # rows 6-7, 8-11, 12-15, 16
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in data.batches(4, 6, 17)]), x[6:17])


class _Images:
    """A stand-in Dataset for :func:`evaluate`: the images are their row numbers in the whole (a
    shard's rows start at ``first``)."""

    def __init__(self, first=0):
        self.first = first

    def take(self, rows):
        rows = (np.asarray(rows) + self.first).astype(np.uint8)
        return np.repeat(rows[:, None, None, None], 4, axis=1).repeat(4, axis=2)


def _hand_made(n=50, seed=0):
    """Predictions on n clean images and their n patched copies, laid out as deploy_patch's augment
    writes them (per batch of 8: the originals, then their copies)."""
    rng = np.random.default_rng(seed)
    rows = []
    for start in range(0, n, 8):
        idx = np.arange(start, min(start + 8, n))
        rows += [(i, False) for i in idx] + [(i, True) for i in idx]
    source = np.array([r[0] for r in rows])
    patched = np.array([r[1] for r in rows])
    probabilities = rng.dirichlet(np.ones(10), len(rows)).astype(np.float32)
    y = (source * 7) % 10
    return {"probabilities": probabilities, "y": y, "patched": patched,
            "patch_target": np.where(patched, 5, -1).astype(np.int16), "source_index": source}


def test_merge_of_hand_made_shards_is_the_whole_evaluation(tmp_path, outputs):
    out = _hand_made()
    whole = evaluate("baseline", "split", out, CLASSES, _Images())
    # two shards of the 50 source images at 24 (on a batch): rows of the first 24 originals and their copies
    cut = int(np.flatnonzero(out["source_index"] >= 24)[0])
    results = []
    for index, (lo, hi, src) in enumerate(((0, cut, 0), (cut, len(out["y"]), 24))):
        part = {k: v[lo:hi] for k, v in out.items()}
        layout = _shards.layout(index, 2, [src, src], [50, 50])
        assert layout["offset"] == lo
        shard = evaluate("baseline", "split", part, CLASSES, _Images(lo), layout)
        path = tmp_path / f"shard{index}"
        _shards.save(str(path), layout, part, shard, {"setting": {}}, "split", CLASSES, (4, 4, 1))
        results.append(str(path))
    merged = steps.merge_evaluations(shard_results=results[::-1])  # in any order
    assert _as_json(merged.evaluations) == _as_json(whole)
    assert merged.metrics["patched_targeted_success_rate"] == whole[1].metrics["targeted_success_rate"]
    assert merged.details["dataset"] == "100 images 4x4x1, 10 classes" and merged.details["shards"] == 2
    with pytest.raises(ParameterError, match=r"needs every shard once, got shards \[1\]"):
        steps.merge_evaluations(shard_results=results[1:])
    _shards.save(str(tmp_path / "whole"), {}, out, whole, {}, "split", CLASSES, (4, 4, 1))
    with pytest.raises(Exception, match="is not infer's shard_result of a shard"):
        steps.merge_evaluations(shard_results=[str(tmp_path / "whole")])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVPATCH_OUTPUT_DIR", str(root / "outputs"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
        steps.load_dataset(dataset=str(root / "train"), source="digits", split="train", max_examples=200, seed=0)
        steps.load_dataset(dataset=str(root / "test"), source="digits", split="test", seed=0)
        steps.train(training_data=str(root / "train"), model=str(root / "model"), epochs=1, seed=0)
        rng = np.random.default_rng(0)
        patches.PatchSet(rng.random((2, 12, 12, 1), np.float32), np.ones((2, 12, 12), np.float32),
                         np.array([3, 5]), CLASSES, (28, 28, 1)).save(root / "ps")
        yield root, mp


def _infer(root, data, out, **kw):
    return steps.infer(data=str(data), model=str(root / "model"), predictions=str(out) + ".csv",
                       shard_result=str(out), batch_size=40, seed=0, **kw)


@pytest.mark.parametrize("method, rate, count", [("augment", 1.0, 3), ("corrupt", 0.6, 2), ("corrupt", 1.0, 5)])
def test_sharded_deploy_defence_and_infer_merge_to_the_unsharded_evaluation(trained, tmp_path, method, rate, count):
    root, _ = trained
    deploy = dict(data=str(root / "test"), patches=str(root / "ps"), patch_deployment_method=method,
                  patch_application_rate=rate, patch_scale=0, scale_min=0.3, scale_max=0.6, rotation_max=30,
                  batch_size=64, seed=3)
    noise = dict(data_role="predict", gaussian_augmentation_sigma=0.1, batch_size=50, seed=3)
    steps.deploy_patch(**deploy, patched_data=str(tmp_path / "whole"))
    steps.gaussian_augmentation(data=str(tmp_path / "whole"), defended_data=str(tmp_path / "whole-noisy"), **noise)
    condition = "split" if method == "augment" else "auto"
    wholes = {name: _infer(root, tmp_path / name, tmp_path / f"r-{name}", condition=condition)
              for name in ("whole", "whole-noisy")}
    results = {"whole": [], "whole-noisy": []}
    for i in range(count):
        steps.deploy_patch(**deploy, patched_data=str(tmp_path / f"s{i}"), shard_index=i, shard_count=count)
        steps.gaussian_augmentation(data=str(tmp_path / f"s{i}"), defended_data=str(tmp_path / f"n{i}"), **noise)
        for name, data in (("whole", f"s{i}"), ("whole-noisy", f"n{i}")):
            _infer(root, tmp_path / data, tmp_path / f"r-{data}", condition=condition)
            results[name].append(str(tmp_path / f"r-{data}"))
    for name in ("whole", "whole-noisy"):  # the same bytes, row by row
        shards = [Dataset(tmp_path / (f"s{i}" if name == "whole" else f"n{i}")).load() for i in range(count)]
        full = Dataset(tmp_path / name).load()
        for k in full:
            np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), full[k], err_msg=k)
        merged = steps.merge_evaluations(shard_results=results[name])
        assert _as_json(merged.evaluations) == _as_json(wholes[name].evaluations)
        assert merged.metrics == wholes[name].metrics
        assert merged.details["dataset"] == wholes[name].details["dataset"]


def test_infer_shards_of_whole_data_merge_to_its_evaluation(trained, tmp_path):
    root, _ = trained
    whole = _infer(root, root / "test", tmp_path / "whole", condition="clean")
    assert json.loads((tmp_path / "whole" / "shard.json").read_text())["layout"] == {}
    parts = [_infer(root, root / "test", tmp_path / f"p{i}", condition="clean", shard_index=i, shard_count=3)
             for i in range(3)]
    assert sum(p.evaluations[0].counts["accuracy"][1] for p in parts) == whole.evaluations[0].counts["accuracy"][1]
    merged = steps.merge_evaluations(shard_results=[str(tmp_path / f"p{i}") for i in range(3)])
    assert _as_json(merged.evaluations) == _as_json(whole.evaluations)
    with pytest.raises(ParameterError, match="shard_index must be smaller than shard_count"):
        _infer(root, root / "test", tmp_path / "bad", shard_index=3, shard_count=3)
    steps.deploy_patch(data=str(root / "test"), patches=str(root / "ps"), patched_data=str(tmp_path / "s0"),
                       shard_index=0, shard_count=2, seed=1)
    with pytest.raises(ParameterError, match="is already shard 0 of 2"):
        _infer(root, tmp_path / "s0", tmp_path / "bad", shard_index=0, shard_count=2)


@pytest.mark.parametrize("name, rows", [("mnist-patch", 2), ("imagenet-patch", 1 + 4), ("mnist-experiment", 1 + 4)])
def test_a_sharded_pipeline_gives_each_shard_its_own_tasks(tmp_path, name, rows):
    """Compiled with --eval-shards 3: a ParallelFor over the 3 shard indices (KFP runs each iteration
    as its own pods), deploy_patch and infer told their shard, and one merge_evaluations per row
    collecting the loop's shard_results; 1 compiles today's graph, with no loop."""
    import re

    import yaml

    from advpatch.app import cli
    from advpatch.params import PREPROCESSING_DEFENCES

    assert rows == 2 or rows == 1 + len(PREPROCESSING_DEFENCES)
    for shards in (1, 3):
        out = tmp_path / f"{shards}.yaml"
        assert cli.main(["compile", name, "--output", str(out), "--eval-shards", str(shards)]) == 0
        spec, _ = yaml.safe_load_all(out.read_text())
        tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
        loops = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-for-loop")]
        merges = {k: t for k, t in tasks.items() if t["componentRef"]["name"].startswith("comp-merge-evaluations")}
        if shards == 1:
            assert not loops and not merges
            continue
        (loop,) = loops
        assert json.loads(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2]
        body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
        kinds = [re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in body.values()]
        assert kinds.count("comp-infer") == rows and kinds.count("comp-deploy-patch") == 1
        for task in body.values():
            if task["componentRef"]["name"].startswith("comp-deploy-patch"):
                parameters = task["inputs"]["parameters"]
                assert parameters["shard_count"]["runtimeValue"]["constant"] == 3
                assert parameters["shard_index"]["componentInputParameter"].startswith("pipelinechannel--loop-item")
        assert len(merges) == rows
        for merge in merges.values():
            (collected,) = merge["inputs"]["artifacts"].values()
            assert collected["taskOutputArtifact"]["outputArtifactKey"].endswith("shard_result")
    assert cli.main(["compile", "mnist-sweep", "--output", str(tmp_path / "s.yaml"), "--eval-shards", "2"]) == 2


@pytest.mark.pipeline
def test_the_short_pipeline_in_shards_gives_the_unsharded_evaluations(mnist_folder, tmp_path_factory):
    """mnist-patch through kfp.local (advpatch run), with 1 and with 3 evaluation shards: the same
    evaluations, every figure of them, and the patched images' bytes."""
    import contextlib
    import io

    from advpatch import settings
    from advpatch.app import cli

    results = {}
    for shards in (1, 3):
        root = tmp_path_factory.mktemp(f"shards-{shards}")
        out = io.StringIO()  # the tasks' output (KFP's local runner logs it to sys.stdout): shown on a failure
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
            mp.delenv(settings.ENV_TRACKING_URI, raising=False)
            mp.delenv(settings.ENV_OUTPUT_DIR, raising=False)
            mp.chdir(root)
            args = ["-p", f"data_dir={mnist_folder}", "-p", "max_iter=100", "-p", "epochs=5"]
            assert cli.main(["run", "mnist-patch", *args, "--eval-shards", str(shards)]) == 0, out.getvalue()[-6000:]
        results[shards] = json.loads((root / "outputs" / "run" / "results.json").read_text())
    one, three = results[1], results[3]
    assert [e["label"] for e in one["evaluations"]] == ["baseline / clean", "baseline / patched"]
    assert json.dumps(three["evaluations"], sort_keys=True) == json.dumps(one["evaluations"], sort_keys=True)
    assert json.dumps(three["comparison"], sort_keys=True) == json.dumps(one["comparison"], sort_keys=True)
    deployed = [s for s in three["steps"] if s["step"] == "deploy_patch"]
    assert len(deployed) == 3 and sum(s["metrics"]["num_patched"] for s in deployed) == 80
