"""Each preprocessing defence on a Dataset artifact: one step per defence that
:func:`advpatch.defences.preprocessing.registered` finds (``spatial_smoothing``,
``jpeg_compression``, ``gaussian_augmentation``, ``feature_squeezing``, ...), named after it."""

from __future__ import annotations

from typing import Any, Callable, Dict

from advpatch.defences import preprocessing as defences
from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, log_input, step
from advpatch.steps._params import StepParams


def _defend(name: str, p: StepParams, track: Tracker, data: str, defended_data: str) -> StepResult:
    """Run the defence ``name`` over a dataset, batch by batch. The output keeps the input's
    per-image columns (so ``infer`` still reports targeted success on defended patched images) and
    records the defence in its provenance. A defence that adds images (Gaussian noise with data
    augmentation, on training data) keeps the originals and adds defended copies of a share of them."""
    import numpy as np

    from advpatch.data.dataset import Dataset
    from advpatch.data.writer import DatasetWriter
    from advpatch.parallel import changed_images

    values = p.all()  # every defence step has data_role, batch_size, output_tar_name and seed, then its own
    source = Dataset(data)
    defence = defences.registered()[name]
    active = defence.applies(values, values["data_role"])
    transform = defence.from_values(values)
    ratio = defence.augmentation(values)
    augment = ratio is not None
    settings = {k: v for k, v in values.items() if k in defence.parameters()}
    record = {"step": name, **settings, "data_role": values["data_role"], "applied": active, "seed": values["seed"]}
    columns = dict(source.spec.columns, **({"augmented": "bool"} if augment else {}))
    if ratio is not None and active:
        extra = defences.augmentation_indices(len(source), ratio, np.random.default_rng(values["seed"]))
    else:
        extra = np.zeros(0, np.int64)
    changed, start = 0, 0
    # a shard's batches are numbered as the whole's, and its first batch, when it starts inside one of the
    # whole's, goes in behind as many blank images as the whole's has before it: the same draws per image
    first, pad = divmod(source.layout.get("offset", 0), values["batch_size"])
    if augment and active and source.layout:
        from advpatch.params import ParameterError

        raise ParameterError(f"{name}: adding images (data augmentation) to a shard of data is not supported")
    with DatasetWriter(defended_data, source.image_shape, source.class_names, columns=columns,
                       provenance=[*source.spec.provenance, record]) as writer:
        for i, batch in enumerate(source.batches(values["batch_size"])):
            x, y = batch["x"], batch["y"]
            cols = {k: v for k, v in batch.items() if k not in ("x", "y")}
            n = len(y)
            seed = values["seed"] * 100003 + first + i
            if augment:
                writer.write(x, y, **cols, augmented=np.zeros(n, bool))
                pick = extra[(extra >= start) & (extra < start + n)] - start
                if len(pick):
                    writer.write(transform.on_images(x[pick], seed), y[pick], **{k: v[pick] for k, v in cols.items()},
                                 augmented=np.ones(len(pick), bool))
                    changed += len(pick)
            elif active:
                if i == 0 and pad:
                    blank = np.zeros((pad, *x.shape[1:]), x.dtype)
                    out = transform.on_images(np.concatenate([blank, x]), seed)[pad:]
                else:
                    out = transform.on_images(x, seed)
                changed += changed_images(out, x)
                writer.write(out, y, **cols)
            else:
                writer.write(x, y, **cols)
            start += n
    metrics = {"applied": float(active), "num_examples": float(writer.spec.num_examples), "num_changed": float(changed)}
    details: Dict[str, Any] = dict(record)
    with track.run(f"{name}: {values['data_role']} data") as run:
        log_input(run, data, "defence")
        run.log_metrics(metrics)
        if values["output_tar_name"]:
            details["mlflow_source"] = run.log_dataset(defended_data, values["output_tar_name"], name)
            details["mlflow_run_id"] = run.run_id
    log.info("%s: %s to %s data; %d images changed or added", name, "applied" if active else "not applied",
             values["data_role"], changed)
    return StepResult(step=name, label=name.replace("_", " "), metrics=metrics, details=details,
                      outputs={"defended_data": {"num_examples": writer.spec.num_examples, "defence_applied": active}})


def _step(name: str) -> Callable[..., StepResult]:
    def body(p: StepParams, track: Tracker, *, data: str, defended_data: str) -> StepResult:
        return _defend(name, p, track, data, defended_data)

    body.__name__ = body.__qualname__ = name
    body.__doc__ = defences.registered()[name].__doc__
    return step(name)(body)


DEFENCE_STEPS = {name: _step(name) for name in defences.registered()}
"""Every preprocessing defence's step, by name."""
