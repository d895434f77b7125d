"""Benchmarks of the patch engine against ART 1.20.1, measured in the same run.

    make bench        (or: python tests/benchmarks/bench_patch.py [--quick])

Prints a table and writes outputs/bench/results.json: for each figure our value, the reference
value and their ratio. The references:

* gen speed: ART's AdversarialPatchTensorFlowV2, its fill-mode bug corrected (REFLECT -> CONSTANT,
  in this benchmark only), 100 iterations over 40 images in batches of 40, LeNet-5 on 28x28;
  and the floor: LeNet's own forward pass plus input gradient at batch 40, in the same kind of
  compiled loop as ours.
* deploy speed: ART's apply_patch over 10,000 images, images per second.
* strength: patches from both implementations with the same iteration budget, applied with the
  same placements at deployment scales 0.2 ... 1.0; targeted success and accuracy on patched
  images. On digits upsampled to the full 28x28 frame (as ART's demos do) and on MNIST-framed
  digits (the embedded default), where ours is also run at a fixed centre position. An ablation,
  ``ours_ce_constant_lr``, is our engine with ART's objective (mean cross-entropy, constant rate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

TARGET = 5
SCALES = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
ROTATION = 22.5


def full_frame_digits(split):
    """scikit-learn's digits upsampled to fill the whole 28x28 frame (ART-demo style)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from advpatch.data.sources import embedded_digits

    framed, y, _ = embedded_digits(split)
    bunch = load_digits()
    # reuse the embedded split: match images by label order is not possible, so redo the split
    images = (bunch.images / 16.0 * 255).astype(np.uint8)
    rng = np.random.RandomState(0)
    is_test = np.zeros(len(bunch.target), bool)
    for c in range(10):
        idx = np.flatnonzero(bunch.target == c)
        rng.shuffle(idx)
        is_test[idx[: int(round(len(idx) * 0.2))]] = True
    keep = is_test if split == "test" else ~is_test
    x = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in images[keep]])
    return x[..., None], bunch.target[keep].astype(np.int32)


def train_lenet(x, y, seed=0):
    from advpatch import models
    from advpatch.models import training

    training.seed_everything(seed)
    model = models.build_model("le_net", (28, 28, 1), 10)
    training.fit(model, x, y, epochs=15, batch_size=32, optimizer="adam", learning_rate=0.002, seed=seed)
    return model


class ConstantFill:
    """Within the block, ART's ImageProjectiveTransformV3 calls use fill_mode CONSTANT."""

    def __enter__(self):
        import tensorflow as tf

        self.tf, self.original = tf, tf.raw_ops.ImageProjectiveTransformV3

        def constant(**kw):
            kw["fill_mode"] = "CONSTANT"
            return self.original(**kw)

        tf.raw_ops.ImageProjectiveTransformV3 = constant
        return self

    def __exit__(self, *exc):
        self.tf.raw_ops.ImageProjectiveTransformV3 = self.original


def art_attack(model, lr, iters, batch, scale_min, scale_max):
    import tensorflow as tf
    from art.attacks.evasion import AdversarialPatchTensorFlowV2
    from art.estimators.classification import TensorFlowV2Classifier

    clf = TensorFlowV2Classifier(model, nb_classes=10, input_shape=(28, 28, 1), clip_values=(0.0, 1.0),
                                 loss_object=tf.keras.losses.CategoricalCrossentropy())
    return AdversarialPatchTensorFlowV2(clf, rotation_max=ROTATION, scale_min=scale_min, scale_max=scale_max,
                                        learning_rate=lr, max_iter=iters, batch_size=batch, patch_shape=(28, 28, 1),
                                        targeted=True, verbose=False)


def art_generate(model, x, lr, iters, batch, scale_min, scale_max, seed=0):
    import tensorflow as tf

    np.random.seed(seed)
    tf.random.set_seed(seed)
    attack = art_attack(model, lr, iters, batch, scale_min, scale_max)
    y = np.zeros((len(x), 10), np.float32)
    y[:, TARGET] = 1
    with ConstantFill():
        t0 = time.perf_counter()
        patch, mask = attack.generate(x, y)
        seconds = time.perf_counter() - t0
    return patch, mask[..., 0], seconds, attack


def classifier_of(model):
    """The LeNet as advpatch's attacks and evaluation see it."""
    from advpatch.models import ModelInfo
    from advpatch.models.classifier import Classifier

    return Classifier(model, ModelInfo("le_net", (28, 28, 1), [str(i) for i in range(10)]))


def our_generate(model, x, lr, iters, batch, scale_min, scale_max, location, shape="circle", seed=0, **options):
    """Our patch; ``options``: PatchOptimizer's ``lr_decay`` and ``loss`` (default: as gen_patch's
    ``patch_loss="auto"`` picks for this location)."""
    from advpatch import patches

    options.setdefault("loss", patches.resolve_loss("auto", location))
    opt = patches.PatchOptimizer(classifier_of(model), (28, 28, 1), 28, patches.make_mask(28, shape), lr, **options)
    kw = dict(max_iter=iters, batch_size=batch, rotation_max=ROTATION, scale_min=scale_min, scale_max=scale_max,
              location=location)
    patches.generate_patch(opt, x, TARGET, rng=np.random.default_rng(seed), **{**kw, "max_iter": 1})  # trace
    t0 = time.perf_counter()
    patch, history = patches.generate_patch(opt, x, TARGET, rng=np.random.default_rng(seed), **kw)
    return patch, patches.make_mask(28, shape), time.perf_counter() - t0


def floor_step_seconds(model, x, steps):
    """LeNet's forward pass + input gradient at this batch, `steps` times in one compiled loop, each
    step depending on the last (as the patch steps do)."""
    import tensorflow as tf

    classifier = classifier_of(model)
    net, from_logits = classifier.scores, classifier.from_logits
    x0 = tf.constant(x, tf.float32)
    y = tf.fill([len(x)], TARGET)

    @tf.function
    def run(n):
        xx = x0
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                tape.watch(xx)
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, net(xx), from_logits=from_logits))
            xx = xx + 1e-9 * tape.gradient(loss, xx)
        return xx

    run(tf.constant(1))
    t0 = time.perf_counter()
    run(tf.constant(steps)).numpy()
    return (time.perf_counter() - t0) / steps


def evaluate(model, x_uint8, y, patch, mask, scale, location, seed):
    from advpatch import patches
    from advpatch.data.dataset import to_float

    ps = patches.PatchSet(patch[None].astype(np.float32), mask[None].astype(np.float32), np.array([TARGET]),
                          [str(i) for i in range(10)], (28, 28, 1))
    # every candidate is a circle (ART's only shape): the same placements for all, from the circle's extent
    where = patches.sample_placements(np.random.default_rng(seed), len(x_uint8), (28, 28), rotation_max=ROTATION,
                                      scale_min=0.1, scale_max=1.0, location=location, patch_scale=scale,
                                      mask=patches.make_mask(28, "circle"))
    out = patches.apply_patches(x_uint8, ps, np.zeros(len(x_uint8), np.int32), where)
    classifier = classifier_of(model)
    clean, patched = classifier.predict_labels(to_float(x_uint8)), classifier.predict_labels(to_float(out))
    eligible = y != TARGET
    return {"targeted_success_rate": float((patched[eligible] == TARGET).mean()),
            "clean_accuracy": float((clean == y).mean()), "patched_accuracy": float((patched == y).mean())}


def _not_worse(ours: float, reference: float, n: int) -> bool:
    """ours >= reference, allowing two standard errors of the difference of two proportions."""
    p = (ours + reference) / 2
    return ours >= reference - 2 * np.sqrt(max(p * (1 - p), 1e-12) * 2 / n)


def sweep(model, x_test, y_test, candidates, repeats):
    """candidates: name -> (patch, mask, location). Same placements for every candidate."""
    rows = {}
    for name, (patch, mask, location) in candidates.items():
        rows[name] = []
        for scale in SCALES:
            runs = [evaluate(model, x_test, y_test, patch, mask, scale, location, seed) for seed in range(repeats)]
            rows[name].append({
                "scale": scale,
                "targeted_success_rate": float(np.mean([r["targeted_success_rate"] for r in runs])),
                "patched_accuracy": float(np.mean([r["patched_accuracy"] for r in runs])),
                "clean_accuracy": runs[0]["clean_accuracy"],
            })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller budgets, for a smoke run")
    parser.add_argument("--output", default="outputs/bench")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from advpatch import patches
    from advpatch.data.dataset import to_float
    from advpatch.data.sources import embedded_digits

    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__},
               "figures": {}, "sweeps": {}}
    figures = results["figures"]

    def figure(name, ours, reference, unit, better, target=None):
        ratio = (reference / ours) if better == "lower" else (ours / reference)
        figures[name] = {"ours": ours, "reference": reference, "unit": unit, "ratio": ratio,
                         "ratio_means": "reference / ours" if better == "lower" else "ours / reference",
                         "target": target, "met": None if target is None else bool(
                             ratio >= target if better != "floor" else ratio <= target)}

    # ---------------------------------------------------------------- data and models
    xf_tr, yf_tr = full_frame_digits("train")
    xf_te, yf_te = full_frame_digits("test")
    xm_tr, ym_tr, _ = embedded_digits("train")
    xm_te, ym_te, _ = embedded_digits("test")
    print("training LeNet-5 on full-frame and MNIST-framed digits ...", flush=True)
    model_full = train_lenet(xf_tr, yf_tr)
    model_mnist = train_lenet(xm_tr, ym_tr)

    # ---------------------------------------------------------------- gen speed
    rng = np.random.default_rng(0)
    gen40 = to_float(xm_tr[rng.choice(np.flatnonzero(ym_tr != TARGET), 40, replace=False)])
    iters = 20 if args.quick else 100
    timing_repeats = 1 if args.quick else 3
    print(f"gen speed: {iters} iterations over 40 images, batch 40, median of {timing_repeats} interleaved runs ...",
          flush=True)
    art_generate(model_mnist, gen40, 0.1, 2, 40, 0.1, 1.0)  # warm-up
    runs: dict = {"ours": [], "art": [], "floor": []}
    for _ in range(timing_repeats):  # interleaved, so a slow spell of the machine hits all three
        runs["ours"].append(our_generate(model_mnist, gen40, 0.1, iters, 40, 0.1, 1.0, "random")[2] / iters)
        runs["art"].append(art_generate(model_mnist, gen40, 0.1, iters, 40, 0.1, 1.0)[2] / iters)
        runs["floor"].append(floor_step_seconds(model_mnist, gen40, iters))
    results["gen_step_seconds_runs"] = runs
    ours_step, art_step, floor_s = (float(np.median(runs[k])) for k in ("ours", "art", "floor"))
    figure("gen_patch step time vs ART (ms)", ours_step * 1e3, art_step * 1e3, "ms/step", "lower", target=10)
    figures["gen_patch step time vs model floor (ms)"] = {
        "ours": ours_step * 1e3, "reference": floor_s * 1e3, "unit": "ms/step", "ratio": ours_step / floor_s,
        "ratio_means": "ours / floor", "target": 1.5, "met": bool(ours_step / floor_s <= 1.5)}

    # ---------------------------------------------------------------- deploy speed
    n = 2000 if args.quick else 10000
    x_dep = np.concatenate([xm_te] * (n // len(xm_te) + 1))[:n]
    patch = np.random.default_rng(1).uniform(0, 1, (28, 28, 1)).astype(np.float32)
    ps = patches.PatchSet(patch[None], patches.make_mask(28, "circle")[None], np.array([TARGET]),
                          [str(i) for i in range(10)], (28, 28, 1))
    print(f"deploy speed: {n} images ...", flush=True)

    def ours_deploy():
        r = np.random.default_rng(0)
        where = patches.sample_placements(r, n, (28, 28), rotation_max=ROTATION, scale_min=0.1, scale_max=1.0,
                                          patch_scale=0.4)
        return patches.apply_patches(x_dep, ps, np.zeros(n, np.int32), where, batch_size=4096)

    ours_deploy()
    t0 = time.perf_counter()
    ours_deploy()
    ours_ips = n / (time.perf_counter() - t0)
    attack = art_attack(model_mnist, 0.1, 1, 40, 0.1, 1.0)
    xf_dep = to_float(x_dep)
    with ConstantFill():
        attack.apply_patch(xf_dep[:100], scale=0.4, patch_external=patch)
        t0 = time.perf_counter()
        attack.apply_patch(xf_dep, scale=0.4, patch_external=patch)
        art_ips = n / (time.perf_counter() - t0)
    figure("deploy_patch throughput vs ART (images/s)", ours_ips, art_ips, "images/s", "higher", target=40)

    # ---------------------------------------------------------------- strength
    budget_iters, gen_n = (10, 400) if args.quick else (50, 400)
    repeats = 1 if args.quick else 2
    seeds = [0] if args.quick else [0, 1, 2]
    for name, model, xtr, ytr, xte, yte in (("full_frame", model_full, xf_tr, yf_tr, xf_te, yf_te),
                                            ("mnist_framed", model_mnist, xm_tr, ym_tr, xm_te, ym_te)):
        r = np.random.default_rng(2)
        gen = to_float(xtr[r.choice(np.flatnonzero(ytr != TARGET), gen_n, replace=False)])
        print(f"strength on {name} digits: {len(seeds)} patches each, {budget_iters} iterations over {gen_n} "
              f"images ({budget_iters * gen_n // 40} steps) per patch ...", flush=True)
        per_seed = []
        seconds = {"ours": 0.0, "art": 0.0}
        for seed in seeds:
            ours_patch, ours_mask, ours_t = our_generate(model, gen, 0.1, budget_iters, 40, 0.1, 1.0, "random",
                                                         seed=seed)
            art_patch, art_mask, art_t, _ = art_generate(model, gen, 0.1, budget_iters, 40, 0.1, 1.0, seed=seed)
            seconds["ours"] += ours_t
            seconds["art"] += art_t
            # ablation: our engine with ART's objective (mean cross-entropy, constant learning rate)
            ce_patch, ce_mask, _ = our_generate(model, gen, 0.1, budget_iters, 40, 0.1, 1.0, "random", seed=seed,
                                                loss="cross_entropy", lr_decay=0.0)
            candidates = {"ours": (ours_patch, ours_mask, "random"), "art": (art_patch, art_mask, "random"),
                          "ours_ce_constant_lr": (ce_patch, ce_mask, "random")}
            if name == "mnist_framed":
                c_patch, c_mask, _ = our_generate(model, gen, 0.1, budget_iters, 40, 0.1, 1.0, "center", seed=seed)
                candidates["ours_center"] = (c_patch, c_mask, "center")
            per_seed.append(sweep(model, xte, yte, candidates, repeats))
        rows = {c: [{k: (float(np.mean([ps[c][i][k] for ps in per_seed])) if k != "scale" else per_seed[0][c][i][k])
                     for k in per_seed[0][c][i]} for i in range(len(SCALES))] for c in per_seed[0]}
        n_eval = len(yte) * repeats * len(seeds)
        results["sweeps"][name] = {"generation_seconds": seconds, "patches_per_implementation": len(seeds),
                                   "evaluations_per_point": n_eval, "rows": rows}
        succ = [o["targeted_success_rate"] for o in rows["ours"]]
        results["sweeps"][name]["checks"] = {
            "ours_success_not_below_art_beyond_noise": all(
                _not_worse(o["targeted_success_rate"], a["targeted_success_rate"], n_eval)
                for o, a in zip(rows["ours"], rows["art"])),
            "ours_accuracy_drop_not_below_art_beyond_noise": all(
                _not_worse(1 - o["patched_accuracy"], 1 - a["patched_accuracy"], n_eval)
                for o, a in zip(rows["ours"], rows["art"])),
            "ours_success_strictly_at_least_art_every_scale": all(
                o["targeted_success_rate"] >= a["targeted_success_rate"] for o, a in zip(rows["ours"], rows["art"])),
            "ours_accuracy_drop_strictly_at_least_art_every_scale": all(
                o["patched_accuracy"] <= a["patched_accuracy"] for o, a in zip(rows["ours"], rows["art"])),
            "ours_success_grows_with_scale": bool(all(b >= a - 0.02 for a, b in zip(succ, succ[1:]))),
            "ours_success_at_scale_1": succ[-1],
            "ours_success_at_scale_1_at_least_0.95": bool(succ[-1] >= 0.95),
        }

    # ---------------------------------------------------------------- report
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print("| figure | ours | reference | ratio | target | met |")
    print("|---|---:|---:|---:|---:|:-:|")
    for k, f in figures.items():
        print(f"| {k} | {f['ours']:.3f} | {f['reference']:.3f} | {f['ratio']:.2f} ({f['ratio_means']}) | "
              f"{f['target']} | {'yes' if f['met'] else 'NO'} |")
    for name, sw in results["sweeps"].items():
        print(f"\nstrength, {name} digits (targeted success / accuracy on patched images; clean accuracy "
              f"{sw['rows']['ours'][0]['clean_accuracy']:.3f}):")
        names = list(sw["rows"])
        print("| scale | " + " | ".join(names) + " |")
        print("|---:|" + "---:|" * len(names))
        for i, scale in enumerate(SCALES):
            cells = [f"{sw['rows'][c][i]['targeted_success_rate']:.3f} / {sw['rows'][c][i]['patched_accuracy']:.3f}"
                     for c in names]
            print(f"| {scale:.1f} | " + " | ".join(cells) + " |")
        print("checks:", json.dumps(sw["checks"]))
    print(f"\nwritten: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
