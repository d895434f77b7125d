"""What every advpatch pipeline shares."""

from typing import Dict

from kfp import dsl
from kfp.dsl import pipeline_context

from advpatch import settings


def tracking(experiment_name) -> Dict[str, object]:
    """Arguments that name a step's MLflow run after its KFP task, in ``experiment_name``. Both are
    the same in every run of the pipeline, so they never keep KFP's cache from hitting; the run
    itself comes from the task's environment (see :func:`place_all`)."""
    return {"experiment_name": experiment_name, "task_name": dsl.PIPELINE_TASK_NAME_PLACEHOLDER}


def load_splits(data_dir, image_size, seed, track, color_mode="grayscale", **options):
    """The training and the test split of ``data_dir`` as Dataset artifacts (in ``color_mode``, at
    ``image_size``; ``options``: more of load_dataset's parameters, e.g. ``class_index``): the two
    ``load_dataset`` tasks every pipeline starts with."""
    from advpatch.components import load_dataset

    data = dict(source=data_dir, image_size=image_size, color_mode=color_mode, seed=seed, **options)
    return (load_dataset(split="train", **data, **track).set_display_name("load training data"),
            load_dataset(split="test", **data, **track).set_display_name("load test data"))


def defence_rows():
    """Each preprocessing defence's row: (its row label, its component's name, the pipeline
    parameter it takes), for every defence :mod:`advpatch.defences` has, in the table's order."""
    from advpatch.defences.preprocessing import registered

    return [(cls.label, name, cls.setting()) for name, cls in registered().items()]


def model_defence_tasks(kind, v, artifacts, track):
    """A task for each ``training`` or ``certified`` defence :mod:`advpatch.defences` has, in rank
    order: its component with the artifacts its ``inputs`` name (``artifacts``: by role, see
    :data:`advpatch.defences.base.ROLES`) and the arguments the pipeline's parameters ``v`` give it."""
    from advpatch import components
    from advpatch.defences.base import model_defences

    tasks = []
    for defence in model_defences(kind).values():
        inputs = {name: artifacts[role] for name, role in defence.inputs.items()}
        tasks.append(getattr(components, defence.component)(**inputs, **defence.arguments(v), row=defence.label,
                                                            **track).set_display_name(defence.display))
    return tasks


def placements(v):
    """deploy_patch's and gen_patch's placement arguments from a pipeline's parameters ``v``."""
    return dict(rotation_max=v["rotation_max"], scale_min=v["scale_min"], scale_max=v["scale_max"],
                patch_location=v["patch_location"], seed=v["seed"])


def attack_budget(v):
    """gen_patch's arguments from a pipeline's parameters ``v``: its budget, target and placements
    (every attack of a pipeline, transferred or adaptive, gets the same)."""
    target = {k: v[k] for k in ("patch_target", "patch_target_name") if k in v}
    return dict(learning_rate=v["patch_learning_rate"], lr_decay=v["patch_lr_decay"], patch_loss=v["patch_loss"],
                max_iter=v["max_iter"], num_patch=v["num_patch"], num_patch_gen_samples=v["num_patch_gen_samples"],
                **target, **placements(v))


def deploy_test(v, attack, test_data, track, **shard):
    """deploy_patch on ``test_data``: each image and a patched copy of it (``shard``: shard_index and
    shard_count, one shard of the images)."""
    from advpatch import components

    return components.deploy_patch(
        data=test_data.outputs["dataset"], patches=attack.outputs["patches"], patch_deployment_method="augment",
        patch_application_rate=1.0, patch_scale=v["patch_scale"], **placements(v), **shard, **track,
    ).set_display_name("deploy_patch: test set (clean + patched copies)" + (", a shard" if shard else ""))


def attack_and_defend(v, model_task, gen_data, test_data, track, batch_size=None, eval_shards=1):
    """What every pipeline does once it has a model: gen_patch on ``gen_data`` -> deploy_patch on
    ``test_data`` (each image and a patched copy of it) -> the baseline and each preprocessing
    defence (:func:`defence_rows`), one infer task each, evaluating the clean and the patched images
    separately. ``v``: the pipeline's parameters (its ``locals()``); ``batch_size``, when given,
    is gen_patch's and infer's (a large model at 224x224 needs a small one). With ``eval_shards`` > 1
    the deploy_patch, defence and infer tasks run once per shard of the test set, in a ParallelFor
    (each shard its own pod), and one merge_evaluations task per row gives its evaluation, exactly as
    unsharded. Returns (gen_patch task, the test set's deploy_patch task (in the loop when sharded),
    the rows' infer or merge_evaluations tasks)."""
    from advpatch import components

    batch = {} if batch_size is None else {"batch_size": batch_size}
    attack = components.gen_patch(data=gen_data.outputs["dataset"], model=model_task.outputs["model"],
                                  **attack_budget(v), **batch, **track)

    def evaluate(row, images, shard):
        return components.infer(data=images, model=model_task.outputs["model"], row=row, condition="split",
                                seed=v["seed"], **batch, **track).set_display_name(f"infer: {row}{shard}")

    def rows_of(pairs, shard=""):
        rows = [evaluate("baseline", pairs, shard)]
        for row, name, setting in defence_rows():
            defended = getattr(components, name)(data=pairs, data_role="predict", seed=v["seed"],
                                                 **{setting: v[setting]}, **track).set_display_name(
                f"{row}: test set{shard}")
            rows.append(evaluate(row, defended.outputs["defended_data"], shard))
        return rows

    if eval_shards == 1:
        patched_test = deploy_test(v, attack, test_data, track)
        return attack, patched_test, rows_of(patched_test.outputs["patched_data"])
    with dsl.ParallelFor(list(range(eval_shards)), name="eval-shards") as shard:
        patched_test = deploy_test(v, attack, test_data, track, shard_index=shard, shard_count=eval_shards)
        shards = rows_of(patched_test.outputs["patched_data"], ", a shard")
    labels = ["baseline", *[row for row, _, _ in defence_rows()]]
    rows = [components.merge_evaluations(shard_results=dsl.Collected(task.outputs["shard_result"]), **track)
            .set_display_name(f"merge: {row}") for task, row in zip(shards, labels)]
    return attack, patched_test, rows


def report_inputs(*tasks) -> Dict[str, object]:
    """The report component's ``summary_01``, ``summary_02``, ... arguments: each task's ``summary``
    output (a gather or collect task's ``bundle``), in table order. More tasks than the report has
    slots go through ``collect`` tasks first, a slot's worth to each, as many levels as it takes."""
    from advpatch.components import collect, report

    slots = [name for name in report.component_spec.inputs if name.startswith("summary_")]
    outputs = [task.outputs["bundle" if "bundle" in task.outputs else "summary"] for task in tasks]
    while len(outputs) > len(slots):
        groups = [outputs[i:i + len(slots)] for i in range(0, len(outputs), len(slots))]
        outputs = [collect(**dict(zip(slots, group))).set_display_name(f"collect: summaries {k + 1}/{len(groups)}")
                   .outputs["bundle"] for k, group in enumerate(groups)]
    return dict(zip(slots, outputs))


RUN_IDENTITY = {
    settings.ENV_PIPELINE_RUN_ID: "metadata.labels['pipeline/runid']",
    settings.ENV_PIPELINE_RUN_NAME: "metadata.labels['workflows.argoproj.io/workflow']",
}
"""Where a task on a cluster finds its pipeline run: the labels KFP (``pipeline/runid``, the run's
id, on every pod of the run) and Argo (the workflow's name) put on its pod, as environment
variables. The local runner ignores them; ``advpatch run`` sets the same variables itself."""




def place_all(placement) -> None:
    """Finish every task of the pipeline being built (call it last in a pipeline function): map its
    run identity into its environment (:data:`RUN_IDENTITY`), keep the components whose metadata says
    ``cache: false`` out of the cache, and apply a placement (``placement.apply(task, component_name)``, see
    :mod:`advpatch.app.placement`); ``None`` places nothing else."""
    from kfp import kubernetes

    from advpatch.components import never_cached

    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        for env, field in RUN_IDENTITY.items():
            kubernetes.use_field_path_as_env(task, env_name=env, field_path=field)
        component = task.component_spec.name.replace("-", "_")
        if component in never_cached():
            task.set_caching_options(False)
        if placement is not None:
            placement.apply(task, component)


def defence_experiment(v, title, color_mode="grayscale", adaptive=False, eval_shards=1):
    """The seed's patch experiment with a model trained here (``mnist-experiment``,
    ``fruits360-experiment``): load -> train a baseline -> :func:`attack_and_defend` -> the training
    defences (:mod:`advpatch.defences.training`: on patched data, PGD adversarial training), each
    evaluating its model on the clean and patched test images itself -> report. ``v``: the
    pipeline's parameters (its ``locals()``). With ``adaptive`` (``mnist-defences``), every defence
    row also faces an adaptive attacker (:func:`adaptive_rows`), its row right after the
    transferred one, and the certified defences (:mod:`advpatch.defences.certified`) add theirs.
    ``eval_shards``: see :func:`attack_and_defend` (the trained rows evaluate on the
    whole patched test set, deployed once more whole)."""
    from advpatch.components import close_run, deploy_patch, report, train
    from advpatch.defences.training import fit_arguments

    track = tracking(v["experiment_name"])
    # the exit task runs when the steps are done, whatever happened, and closes the pipeline's MLflow run
    with dsl.ExitHandler(close_run(**track).set_display_name("close the MLflow run")):
        train_data, test_data = load_splits(v["data_dir"], v["image_size"], v["seed"], track, color_mode)
        fit = dict(training_data=train_data.outputs["dataset"], testing_data=test_data.outputs["dataset"],
                   **fit_arguments(v), **track)
        baseline = train(model_tag="baseline", **fit).set_display_name("train: baseline")
        attack, patched_test, rows = attack_and_defend(v, baseline, train_data, test_data, track,
                                                       eval_shards=eval_shards)
        if eval_shards > 1:
            patched_test = deploy_test(v, attack, test_data, track)
        patched_train = deploy_patch(
            data=train_data.outputs["dataset"], patches=attack.outputs["patches"], patch_deployment_method="augment",
            patch_application_rate=v["train_patch_application_rate"], patch_scale=v["patch_scale"],
            output_tar_name="adv_training.tar", **placements(v), **track,
        ).set_display_name("deploy_patch: training set (augment)")
        artifacts = {"training_data": train_data.outputs["dataset"], "baseline_model": baseline.outputs["model"],
                     "patched_training_data": patched_train.outputs["patched_data"],
                     "patched_test_data": patched_test.outputs["patched_data"]}
        # the training defences' rows: each training evaluates its model on the clean and patched test images itself
        trained_rows = model_defence_tasks("training", v, artifacts, track)
        if adaptive:
            (rows, trained_rows), attacks = adaptive_rows(v, baseline, attack, rows, trained_rows, train_data,
                                                          test_data, track)
            trained_rows += model_defence_tasks("certified", v, artifacts, track)
        else:
            attacks = []
        report(**report_inputs(baseline, attack, *attacks, patched_train, patched_test, *rows, *trained_rows),
               title=title, **track)


def adaptive_rows(v, baseline, baseline_attack, rows, trained_rows, gen_data, test_data, track):
    """For each defence row, a row under an adaptive attacker with the baseline attack's budget:
    patches optimized through the preprocessing defence in front of the baseline model (gen_patch
    ``defence``), or against the hardened model itself (the training defences); and a worst-case
    row: the same patches, each image's placement searched against the defended model (deploy_patch
    ``patch_placement='worst_case'``), the baseline's too. Returns the rows interleaved (transferred,
    adaptive, worst case) and the new gen_patch tasks."""
    from advpatch import components
    from advpatch.defences.base import model_defences

    budget = {**attack_budget(v), **track}
    attacks, new_rows, new_trained = [], [], []

    def deployed(model_task, patches, row, worst, **defence):
        how = "worst case" if worst else "adaptive"
        search = {} if not worst else dict(
            patch_placement="worst_case", model=model_task.outputs["model"], **defence,
            worst_case_stride=v["worst_case_stride"], worst_case_angles=v["worst_case_angles"])
        return components.deploy_patch(
            data=test_data.outputs["dataset"], patches=patches, patch_deployment_method="augment",
            patch_application_rate=1.0, patch_scale=v["patch_scale"], **placements(v), **search, **track,
        ).set_display_name(f"deploy_patch: {how}, {row}").outputs["patched_data"]

    def attacked(model_task, row, **defence):
        attack = components.gen_patch(data=gen_data.outputs["dataset"], model=model_task.outputs["model"], **budget,
                                      **defence).set_display_name(f"gen_patch: adaptive, {row}")
        attacks.append(attack)
        patches = attack.outputs["patches"]
        return deployed(model_task, patches, row, False), deployed(model_task, patches, row, True, **defence)

    def evaluate(model_task, images, row, name="", setting=""):
        if name:
            images = getattr(components, name)(
                data=images, data_role="predict", seed=v["seed"], **{setting: v[setting]}, **track,
            ).set_display_name(row.replace(" (", ": ").replace(")", " test set")).outputs["defended_data"]
        return components.infer(data=images, model=model_task.outputs["model"], row=row, condition="split",
                                seed=v["seed"], **track).set_display_name(f"infer: {row}")

    # the baseline's own patches, placed where they hurt most
    new_rows += [rows[0], evaluate(baseline, deployed(baseline, baseline_attack.outputs["patches"], "baseline", True),
                                   "baseline (worst case)")]
    for (row, name, setting), transferred in zip(defence_rows(), rows[1:]):
        random, worst = attacked(baseline, row, defence=name, **{setting: v[setting]})
        new_rows += [transferred, evaluate(baseline, random, f"{row} (adaptive)", name, setting),
                     evaluate(baseline, worst, f"{row} (worst case)", name, setting)]
    for task, defence in zip(trained_rows, model_defences("training").values()):
        row = defence.label
        if not defence.adaptive:  # a defence that says no attacker can be adapted to it keeps its row alone
            new_trained.append(task)
            continue
        random, worst = attacked(task, row)
        new_trained += [task, evaluate(task, random, f"{row} (adaptive)"), evaluate(task, worst, f"{row} (worst case)")]
    return (new_rows, new_trained), attacks


def model_experiment(v, make_model, title, color_mode, class_index="", eval_shards=1):
    """The patch experiment on a model made by ``make_model(test_data, track)`` (init_model's
    pretrained weights, import_model's user file): load -> the model, evaluated on the test split ->
    :func:`attack_and_defend`, the patches drawn from the training split -> report. ``eval_shards``: see
    :func:`attack_and_defend` (the report lists each shard's deploy_patch)."""
    from advpatch.components import close_run, gather, report

    track = tracking(v["experiment_name"])
    with dsl.ExitHandler(close_run(**track).set_display_name("close the MLflow run")):
        gen_data, test_data = load_splits(v["data_dir"], v["image_size"], v["seed"], track, color_mode,
                                          class_index=class_index, max_examples=v["max_examples"])
        gen_data.set_display_name("load patch generation data")
        model = make_model(test_data, track)
        attack, patched_test, rows = attack_and_defend(v, model, gen_data, test_data, track, v["batch_size"],
                                                       eval_shards)
        if eval_shards > 1:
            patched_test = gather(summaries=dsl.Collected(patched_test.outputs["summary"]), **track).set_display_name(
                "gather: deploy_patch shards")
        report(**report_inputs(model, attack, patched_test, *rows), title=title, **track)
