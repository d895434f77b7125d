"""Evaluation shards: which rows a shard of a step's input is, and where it sits in the whole (its
layout, which deploy_patch and infer record in their output's provenance, see
:attr:`advpatch.data.dataset.Dataset.layout`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

    from advpatch.data.dataset import Dataset
    from advpatch.results import Evaluation
    from advpatch.steps._params import DeployPatchParams


def bounds(n: int, index: int, count: int, align: int = 1) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``index`` of ``count`` over ``n`` rows: contiguous, in order, as
    even as can be with every shard but the last a whole number of ``align`` rows (deploy_patch's
    augment: the whole's batches, whose originals and copies it writes together, stay whole)."""
    from advpatch.params import require

    require(index < count, f"shard_index must be smaller than shard_count, got {index} and {count}")
    blocks = -(-n // align)
    require(count <= blocks, f"shard_count={count} is more than the {blocks} block(s) of {align} of the {n} images: "
                             f"every shard needs one; use fewer shards")
    return min(n, blocks * index // count * align), min(n, blocks * (index + 1) // count * align)


def layout(index: int, count: int, before: Sequence[int], total: Sequence[int]) -> Dict[str, Any]:
    """A shard's layout: its ``index`` of ``count``, [unpatched, patched] rows of the whole ``before``
    it and in ``total``, and so its first row's position in the whole, ``offset``."""
    return {"index": index, "count": count, "offset": int(sum(before)), "before": [int(b) for b in before],
            "total": [int(t) for t in total]}


def part(layout_: Dict[str, Any], patched: Any) -> Tuple[int, int]:
    """Where the rows of an evaluation of a shard sit among the whole's: (rows before, rows in all) for
    its unpatched rows (``patched`` False), patched rows (True) or all rows (None)."""
    pick = [0, 1] if patched is None else [int(patched)]
    return sum(layout_["before"][i] for i in pick), sum(layout_["total"][i] for i in pick)


def of_rows(dataset: Dataset, index: int, count: int, start: int, stop: int) -> Dict[str, Any]:
    """The layout of rows ``start:stop`` of ``dataset`` as shard ``index`` of ``count`` (infer's own
    shards; the data's layout when ``count`` is 1: ``{}`` for whole data). Data that is already a
    shard is not split again."""
    import numpy as np

    from advpatch.errors import DatasetError
    from advpatch.io.files import read_arrays
    from advpatch.params import require

    if count == 1:
        return dict(dataset.layout)
    require(not dataset.layout, f"infer: shard_count={count} splits whole data, and {dataset.summary()} is "
                                f"already shard {dataset.layout.get('index')} of {dataset.layout.get('count')}")
    flags = np.zeros(len(dataset), bool)
    if "patched" in dataset.spec.columns:
        flags = np.concatenate([read_arrays(dataset.path / s["file"], ["col_patched"], DatasetError)["col_patched"]
                                for s in dataset.spec.shards]).astype(bool)
    patched = [int(flags[:start].sum()), int(flags.sum())]
    return layout(index, count, [start - patched[0], patched[0]], [len(flags) - patched[1], patched[1]])


FORMAT = "advpatch-shard-evaluation"
ARRAYS = "arrays.npz"
MANIFEST = "shard.json"


def save(path: str, layout_: Dict[str, Any], out: Dict[str, Any], evaluations: List[Evaluation],
         details: Dict[str, Any], condition: str, class_names: Sequence[str], image_shape: Sequence[int]) -> None:
    """infer's ``shard_result``: of a shard, its per-image predictions ``out`` (every array, the
    probabilities in full) and its evaluations (their samples are the merged evaluation's); of whole
    data, only a manifest that says so."""
    import dataclasses
    import json

    from advpatch.io.files import atomic_dir, save_npz

    with atomic_dir(path) as tmp:
        if layout_:
            save_npz(tmp / ARRAYS, **out)
        (tmp / MANIFEST).write_text(json.dumps({
            "format": FORMAT, "layout": layout_, "condition": condition, "class_names": list(class_names),
            "image_shape": list(image_shape), "details": details,
            "evaluations": [dataclasses.asdict(e) for e in evaluations] if layout_ else []}))


def of_deployment(p: DeployPatchParams, n: int, record: Dict[str, Any]) -> Tuple[int, int]:
    """deploy_patch's rows of its ``n`` images (``p``: its parameters); with ``augment`` (each batch's
    originals, then their copies) a shard is whole batches. A shard's provenance ``record`` gets its
    layout once the draws are made (:func:`record_deployment`), before the writer closes."""
    kept = p.patch_deployment_method == "augment"
    if p.shard_count > 1:
        record["shard"] = {}
    return bounds(n, p.shard_index, p.shard_count, p.batch_size if kept else 1)


def record_deployment(p: DeployPatchParams, record: Dict[str, Any], chosen: Optional[np.ndarray], start: int) -> None:
    """A deploy_patch shard's layout from which of all the images got a patch (``chosen``)."""
    if p.shard_count == 1 or chosen is None:
        return
    patched = [int(chosen[:start].sum()), int(chosen.sum())]
    kept = p.patch_deployment_method == "augment"  # every original stays beside its copy
    record["shard"].update(layout(p.shard_index, p.shard_count, [start - (0 if kept else patched[0]), patched[0]],
                                  [len(chosen) - (0 if kept else patched[1]), patched[1]]))
