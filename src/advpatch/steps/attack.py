"""The patch attack: gen_patch (a model and images -> a patch set) and deploy_patch (a patch set
and a Dataset artifact -> a patched Dataset artifact)."""

from __future__ import annotations

from typing import Any, Dict

from advpatch.results import StepResult
from advpatch.steps._base import Tracker, log, log_input, step
from advpatch.steps._params import DeployPatchParams, GenPatchParams


@step("gen_patch")
def gen_patch(p: GenPatchParams, track: Tracker, *, data: str, patches: str, model: str = "") -> StepResult:
    """Generate ``num_patch`` targeted patches against a model (see :mod:`advpatch.patches`).

    Each patch gets its target (``patch_target``, or a random class per patch when -1) and its own
    ``num_patch_gen_samples`` generation images, drawn from those whose label is not the target.
    With ``defence``, the attacker is adaptive: the patch is optimized, and its success on the
    generation images measured, through that preprocessing defence in front of the model. With
    ``patch_conditioning``, each target gets a placement-conditioned set (a canvas, or a grid of
    patches), see :mod:`advpatch.patches.conditioned`.
    """
    import numpy as np

    from advpatch import patches as engine
    from advpatch.data.dataset import Dataset
    from advpatch.models import precheck
    from advpatch.patches import conditioned

    dataset = Dataset(data)
    num_classes = len(dataset.class_names)
    precheck(model, p.model_uri, dataset.image_shape, num_classes, p.model_architecture)
    target = engine.target_index(p.patch_target, p.patch_target_name, dataset.class_names)
    conditioning, size = conditioned.for_images(p.patch_conditioning, p.patch_grid_size, dataset.image_shape,
                                                p.patch_size)
    loss = engine.resolve_loss(p.patch_loss, p.patch_location, p.patch_conditioning)
    from advpatch.steps._attack import attacked_classifier

    classifier = attacked_classifier(p, model, dataset)
    info = classifier.info
    labels = dataset.labels()  # the images themselves are read only where a patch draws them
    rng = np.random.default_rng(p.seed)
    targets = engine.draw_targets(target, p.num_patch, num_classes, rng)
    placement = {**p.pick("rotation_max", "scale_min", "scale_max"), "location": p.patch_location}
    settings = {**p.pick("learning_rate", "max_iter", "patch_target", "patch_target_name", "num_patch",
                         "num_patch_gen_samples", "batch_size", "patch_shape", "lr_decay", "patch_loss", "seed"),
                "defence": [t.settings() for t in classifier.transforms],
                **placement, "patch_size": size, "loss": loss, "model_architecture": info.architecture,
                "model": p.model_uri or info.provenance.get("mlflow_model_uri", model), "data": dataset.spec.provenance}
    patch_set, seconds = engine.generate_patch_set(
        classifier, dataset, labels, targets, num_gen_samples=p.num_patch_gen_samples,
        patch_size=size, patch_shape=p.patch_shape, learning_rate=p.learning_rate, lr_decay=p.lr_decay, loss=loss,
        max_iter=p.max_iter, batch_size=p.batch_size, placement=placement, rng=rng, settings=settings,
        conditioning=conditioning)
    results = [{**r, "seconds": t} for r, t in zip(patch_set.metrics, seconds)]
    metrics: Dict[str, float] = {}
    for i, r in enumerate(patch_set.metrics):
        metrics.update({f"patch_{i}_{k}": float(v) for k, v in r.items() if k not in ("target", "num_gen_samples")})
    metrics["mean_gen_targeted_success_rate"] = float(np.mean([r["gen_targeted_success_rate"] for r in results]))
    counts = {f"patch_{i}_{k}": [round(r[k] * r["num_gen_samples"]), int(r["num_gen_samples"])]
              for i, r in enumerate(results) for k in ("gen_targeted_success_rate", "gen_patched_accuracy")}
    # every patch has its own generation images, all outside its target class: pooled counts
    successes = [counts[f"patch_{i}_gen_targeted_success_rate"] for i in range(len(results))]
    counts["mean_gen_targeted_success_rate"] = [sum(k for k, _ in successes), sum(n for _, n in successes)]
    metrics["mean_final_loss"] = float(np.mean([r["final_loss"] for r in results]))
    against = (f" {p.patch_conditioning}" if conditioning else "") + (
        f" against {p.defence}" if p.defence != "none" else "")
    with track.run(f"gen_patch: {p.num_patch} patches{against}", model=p.model_uri or model) as run:
        log_input(run, data, "generation")
        run.log_metrics(metrics)
        patch_set.save(patches)
        run.log_artifacts(patches, "patches")
    from advpatch.data.readers import png_base64

    target_names = [dataset.class_names[t] for t in targets]
    previews = [png_base64(conditioned.preview(patch_set, i)) for i in range(len(targets))]
    return StepResult(
        step="gen_patch",
        label=f"gen_patch x{p.num_patch}{against} ({p.patch_location}, scale {p.scale_min}-{p.scale_max})",
        metrics=metrics, counts=counts, details={"targets": target_names, "per_patch": results, "previews": previews,
                                                  **placement},
        outputs={"patches": {"format": engine.FORMAT, "targets": target_names}},
    )


@step("deploy_patch", loops=True)
def deploy_patch(p: DeployPatchParams, track: Tracker, *, data: str, patches: str, patched_data: str,
                 model: str = "") -> StepResult:
    """Put patches from a patch set on a dataset (see :func:`advpatch.patches.deploy`): the patched
    dataset carries each image's provenance (was it patched, with which patch, where). A
    placement-conditioned set pastes what each placement picks. ``patch_placement='worst_case'``
    searches each image's placement against the model (``model`` or ``model_uri``), with
    ``defence`` in front (see :mod:`advpatch.patches.worst_case`). ``shard_index`` of ``shard_count``:
    only that shard of the images, each patched as when all are (its layout in the provenance)."""
    import numpy as np

    from advpatch import patches as engine
    from advpatch.data.dataset import Dataset
    from advpatch.data.writer import DatasetWriter
    from advpatch.evaluation import summarize
    from advpatch.parallel import capped, deploy_block, deploy_bytes
    from advpatch.steps import _shards
    from advpatch.steps._attack import check_placement, worst_case_search

    dataset = Dataset(data)
    patch_set = engine.PatchSet.load(patches)
    engine.check_fits(patch_set, dataset.image_shape, len(dataset.class_names))
    engine.conditioning_of(patch_set)  # a conditioned set must hold whole sets
    worst = check_placement(p, model, dataset)
    if dataset.spec.columns:  # the input's per-image columns are dropped
        log.warning("deploy_patch: dropping the per-image columns %s", sorted(dataset.spec.columns))
    placement = {**p.pick("rotation_max", "scale_min", "scale_max"), "location": p.patch_location}
    record = {"step": "deploy_patch", **p.pick("patch_deployment_method", "patch_application_rate", "batch_size",
                                               "seed", "rotation_max", "scale_min", "scale_max", "patch_location",
                                               "patch_scale"),
              "patch_set": patch_set.settings.get("model", ""), "targets": [int(t) for t in patch_set.targets]}
    search = worst_case_search(p, model, dataset, record) if worst else None
    start, stop = _shards.of_deployment(p, len(dataset), record)
    batch = p.batch_size if p.patch_deployment_method == "augment" else (  # augment's layout is per batch
        capped(p.batch_size, p.memory_budget_mb, deploy_bytes(dataset.image_shape)))
    with DatasetWriter(patched_data, dataset.image_shape, dataset.class_names, columns=engine.PATCH_COLUMNS,
                       provenance=[*dataset.spec.provenance, record]) as writer:
        deployed = engine.deploy(
            dataset, patch_set, writer, method=p.patch_deployment_method,
            application_rate=p.patch_application_rate, patch_scale=p.patch_scale, placement=placement,
            batch_size=batch, rng=np.random.default_rng(p.seed), search=search, start=start, stop=stop,
            block=deploy_block(len(dataset), p.memory_budget_mb, dataset.image_shape))
        _shards.record_deployment(p, record, deployed.chosen, start)
        num_patched, distances, won = deployed[:3]
    metrics: Dict[str, float] = {"num_patched": float(num_patched), "num_examples": float(writer.spec.num_examples)}
    if won is not None:  # images whose chosen placement makes the model (as searched) say the target
        metrics.update(worst_case_num_won=float(won.sum()), worst_case_won_rate=float(won.mean()) if len(won) else 0.0)
    metrics.update({f"{k}_{stat}": v for k, values in distances.items() for stat, v in summarize(values).items()})
    details: Dict[str, Any] = {**p.pick("patch_deployment_method", "patch_application_rate", "batch_size", "seed",
                                        "patch_scale", "patch_placement"), **placement}
    extra: Dict[str, Any] = {"model": p.model_uri or model} if worst else {}
    with track.run(f"deploy_patch: {p.patch_deployment_method}" + (", worst case" if worst else ""), **extra) as run:
        log_input(run, data, "deployment")
        run.log_metrics(metrics)
        if p.output_tar_name:  # the seed's cross-run reuse: adv_testing.tar / adversarial_patched_data
            details["mlflow_source"] = run.log_dataset(patched_data, p.output_tar_name, p.output_dataset_name)
            details["mlflow_run_id"] = run.run_id
    log.info("deploy_patch: %d of %d images patched (%s), %d written", num_patched, len(dataset),
             p.patch_deployment_method, writer.spec.num_examples)
    scale = f"scale {p.patch_scale}" if p.patch_scale else f"scale {p.scale_min}-{p.scale_max}"
    where = f"worst case of {p.patch_location}" if worst else p.patch_location
    return StepResult(step="deploy_patch", label=f"deploy_patch {p.patch_deployment_method} ({where}, {scale})",
                      metrics=metrics, details=details,
                      outputs={"patched_data": {"num_examples": writer.spec.num_examples, "num_patched": num_patched}})
