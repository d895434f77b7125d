"""The preprocessing defences on a Dataset artifact: spatial_smoothing, jpeg_compression and
gaussian_augmentation (see :mod:`advpatch.defences.preprocessing`)."""

from __future__ import annotations

from typing import Any, Dict

from advpatch.results import StepResult
from advpatch.steps._base import log, log_input, step


def _defend(name: str, p, track, data: str, defended_data: str, *, apply_fit: bool, apply_predict: bool,
            augment: bool = False, ratio: float = 0.0) -> StepResult:
    """Run the defence ``name`` over a dataset, batch by batch. The output keeps the input's
    per-image columns (so ``infer`` still reports targeted success on defended patched images) and
    records the defence in its provenance. With ``augment`` (Gaussian noise on training data) the
    originals are kept and noisy copies of ``round(ratio * n)`` of them are added."""
    import numpy as np

    from advpatch.data.dataset import Dataset, DatasetWriter, to_float, to_uint8
    from advpatch.defences import preprocessing as defences

    source = Dataset(data)
    active = defences.applies(apply_fit, apply_predict, p.data_role)
    transform = defences.from_params(name, p.all())
    settings = {k: v for k, v in p.all().items() if k.startswith(name)}
    record = {"step": name, **settings, "data_role": p.data_role, "applied": active, "seed": p.seed}
    columns = dict(source.spec.columns, **({"augmented": "bool"} if augment else {}))
    extra = (defences.augmentation_indices(len(source), ratio, np.random.default_rng(p.seed)) if augment and active
             else np.zeros(0, np.int64))
    changed, start = 0, 0
    with DatasetWriter(defended_data, source.image_shape, source.class_names, columns=columns,
                       provenance=source.spec.provenance + [record]) as writer:
        for i, batch in enumerate(source.batches(p.batch_size)):
            x, y = batch["x"], batch["y"]
            cols = {k: v for k, v in batch.items() if k not in ("x", "y")}
            n = len(y)
            call = defences.seeded(transform.numpy, p.seed * 100003 + i)
            if augment:
                writer.write(x, y, **cols, augmented=np.zeros(n, bool))
                pick = extra[(extra >= start) & (extra < start + n)] - start
                if len(pick):
                    writer.write(to_uint8(call(to_float(x[pick]))), y[pick], **{k: v[pick] for k, v in cols.items()},
                                 augmented=np.ones(len(pick), bool))
                    changed += len(pick)
            elif active:
                out = to_uint8(call(to_float(x)))
                changed += int((out != x).reshape(n, -1).any(axis=1).sum())
                writer.write(out, y, **cols)
            else:
                writer.write(x, y, **cols)
            start += n
    metrics = {"applied": float(active), "num_examples": float(writer.spec.num_examples), "num_changed": float(changed)}
    details: Dict[str, Any] = dict(record)
    with track.run(f"{name}: {p.data_role} data") as run:
        log_input(run, data, "defence")
        run.log_metrics(metrics)
        if p.output_tar_name:
            details["mlflow_source"] = run.log_dataset(defended_data, p.output_tar_name, name)
            details["mlflow_run_id"] = run.run_id
    log.info("%s: %s to %s data; %d images changed or added", name, "applied" if active else "not applied",
             p.data_role, changed)
    return StepResult(step=name, label=name.replace("_", " "), metrics=metrics, details=details,
                      outputs={"defended_data": {"num_examples": writer.spec.num_examples, "defence_applied": active}})


@step("spatial_smoothing")
def spatial_smoothing(p, track, *, data: str, defended_data: str) -> StepResult:
    """Median filtering over a window (ART SpatialSmoothing)."""
    return _defend("spatial_smoothing", p, track, data, defended_data, apply_fit=p.spatial_smoothing_apply_fit,
                   apply_predict=p.spatial_smoothing_apply_predict)


@step("jpeg_compression")
def jpeg_compression(p, track, *, data: str, defended_data: str) -> StepResult:
    """JPEG compression and decompression (ART JpegCompression), grayscale or RGB."""
    return _defend("jpeg_compression", p, track, data, defended_data, apply_fit=p.jpeg_compression_apply_fit,
                   apply_predict=p.jpeg_compression_apply_predict)


@step("gaussian_augmentation")
def gaussian_augmentation(p, track, *, data: str, defended_data: str) -> StepResult:
    """Gaussian noise (ART GaussianAugmentation): noisy images replace the originals, or with data
    augmentation noisy copies of a share of them are added (training data only)."""
    return _defend("gaussian_augmentation", p, track, data, defended_data,
                   apply_fit=p.gaussian_augmentation_apply_fit, apply_predict=p.gaussian_augmentation_apply_predict,
                   augment=p.gaussian_augmentation_perform_data_augmentation, ratio=p.gaussian_augmentation_ratio)
