"""merge_evaluations: the shards' infer results (a ParallelFor's, collected) -> the evaluation of
the whole data, exactly as one infer task over it makes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, step
from advpatch.steps._params import MergeEvaluationsParams


def load(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A ``shard_result`` of infer: (its manifest, its per-image arrays)."""
    from advpatch.errors import DatasetError
    from advpatch.io.files import read_manifest
    from advpatch.steps import _shards

    def parse(meta: Any) -> Dict[str, Any]:
        if meta.get("format") != _shards.FORMAT or not meta.get("layout"):
            raise DatasetError(f"{path} is not infer's shard_result of a shard (eval_shards > 1)")
        return dict(meta)

    meta = read_manifest(Path(path) / _shards.MANIFEST, DatasetError, "shard result", parse)
    import numpy as np

    with np.load(Path(path) / _shards.ARRAYS, allow_pickle=False) as arrays:
        return meta, {k: arrays[k] for k in arrays.files}


@step("merge_evaluations")
def merge_evaluations(p: MergeEvaluationsParams, track: Tracker, *, shard_results: List[str]) -> StepResult:
    """Merge infer's results on every shard of a dataset (``shard_results``, in any order) into the
    evaluations of the whole: the shards' per-image predictions, put back in the whole's order, go
    through the same evaluation as infer's (:func:`advpatch.steps._evaluations.evaluate`), so every
    metric, count, interval and confusion matrix is the one an unsharded infer reports, to the bit;
    the samples are the shards' (each kept those of the whole's samples it holds)."""
    import numpy as np

    from advpatch.params import require
    from advpatch.steps._evaluations import evaluate, log_evaluations
    from advpatch.steps.infer import result

    parts = sorted((load(path) for path in shard_results), key=lambda part: part[0]["layout"]["index"])
    metas = [meta for meta, _ in parts]
    count = metas[0]["layout"]["count"] if metas else 0
    require(bool(metas) and [m["layout"]["index"] for m in metas] == list(range(count))
            and all(m["layout"]["count"] == count for m in metas),
            f"merge_evaluations needs every shard once, got shards {[m['layout']['index'] for m in metas]}")
    first = metas[0]
    row = first["evaluations"][0]["row"]
    require(all((m["condition"], m["class_names"], m["evaluations"][0]["row"]) == (first["condition"],
                first["class_names"], row) for m in metas), "merge_evaluations: the shards are not of one evaluation")
    out = {k: np.concatenate([arrays[k] for _, arrays in parts]) for k in parts[0][1]}
    samples = {e["condition"]: [s for m in metas for s in m["evaluations"][i]["samples"]]
               for i, e in enumerate(first["evaluations"])}
    evaluations = evaluate(row, first["condition"], out, first["class_names"], None, samples=samples)
    h, w, c = first["image_shape"]
    details = {**first["details"], "dataset": f"{len(out['y'])} images {h}x{w}x{c}, {len(first['class_names'])} "
                                              f"classes", "shards": count}
    log_evaluations(track, evaluations, "infer", data="", **details.get("setting", {}))
    log.info("merge_evaluations: %d shards of %s, %d images", count, row, len(out["y"]))
    return result(row, evaluations, details)

