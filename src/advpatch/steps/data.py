"""load_dataset: a data source -> a Dataset artifact."""

from __future__ import annotations

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, step
from advpatch.steps._params import LoadDatasetParams


@step("load_dataset")
def load_dataset(p: LoadDatasetParams, track: Tracker, *, dataset: str) -> StepResult:
    """Import ``p.source`` (see :mod:`advpatch.data.sources`) as a Dataset artifact at ``dataset``."""
    from advpatch.data.sources import import_dataset

    spec = import_dataset(p.source, dataset, **p.pick("split", "image_size", "color_mode", "max_examples", "seed",
                                                      "class_index"))
    h, w, c = spec.image_shape
    log.info("load_dataset: wrote %d images %dx%dx%d in %d classes to %s", spec.num_examples, h, w, c,
             spec.num_classes, dataset)
    metrics = {"num_examples": float(spec.num_examples), "num_classes": float(spec.num_classes)}
    with track.run(f"load_dataset: {p.split}") as run:
        run.log_metrics(metrics)
    return StepResult(
        step="load_dataset", label=f"{p.source} ({p.split})", metrics=metrics,
        details={"image_shape": [h, w, c], "class_names": spec.class_names},
        outputs={"dataset": {"num_examples": spec.num_examples, "image_shape": [h, w, c],
                             "class_names": spec.class_names}},
    )
