"""advpatch's derandomized smoothing (:mod:`advpatch.defences.smoothing`) against ART 1.20.1's
``TensorFlowV2DeRandomizedSmoothing``, on the same base model and the same images.

    python tests/benchmarks/art_derandomized.py MODEL_DIR TEST_DATASET_DIR

The base model takes advpatch's views [n, 28, 28, 2]: ``(x, 1 - x)`` where a column (or row) band
of the ablation size is kept, ``(0, 0)`` elsewhere. ART's column ablator appends the ``1 - x``
channel itself (in the same order), so ART is given the images [n, 28, 28, 1] with
``input_shape=(28, 28, 1)`` and ``channels_first=False``: it transposes to channels-first, ablates
(in row mode, on the image transposed) and transposes back, and the model receives exactly
advpatch's views (checked here view by view, every position). ART has column, row and block views
but not advpatch's ``cross`` (every column band and every row band, one vote each, a patch reaching
``2 (p + b - 1)`` views): a cross-trained base model is compared one half at a time (its column
views with ``ablation="column"``, its row views with ``ablation="row"``: the views, the votes and
each half's own certificate), and the cross certificate itself has no ART counterpart. Both
sides are timed on the same images after a small warm-up (tracing excluded); each side's time
covers every view's forward pass, the votes, the counts and the certificates at every patch size.
ART's source lines are quoted from the installed package, so the notes name exact file:line.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def _quote(module, text: str) -> str:
    """``file:line: code`` of the first line of ``module``'s source containing ``text``."""
    path = inspect.getsourcefile(module)
    for number, line in enumerate(inspect.getsourcelines(module)[0], 1):
        if text in line:
            return f"{path.split('site-packages/')[-1]}:{number}: {line.strip()}"
    return f"{path}: (no line containing {text!r})"


def _failure(error: BaseException) -> dict:
    """An exception as text plus the innermost file:line it came from (ART's, if it is in ART)."""
    frames = traceback.extract_tb(error.__traceback__)
    inside = [f for f in frames if "/art/" in f.filename] or frames
    where = f"{inside[-1].filename}:{inside[-1].lineno}" if inside else "?"
    return {"error": f"{type(error).__name__}: {error}", "where": where,
            "traceback": traceback.format_exception(error)[-3:]}


def _advpatch_side(net, x, patch_sizes, ablation, ablation_size, threshold) -> dict:
    from advpatch.defences import smoothing as certified

    certified.view_probabilities(net, x[:2], ablation, ablation_size)  # warm-up
    start = time.perf_counter()
    probs = certified.view_probabilities(net, x, ablation, ablation_size)
    votes = certified.counts(certified.votes_from(probs, threshold))
    certs = {p: certified.certify(votes, ablation, ablation_size, p) for p in patch_sizes}
    seconds = time.perf_counter() - start
    return {"counts": votes, "predictions": certified.predict(votes), "certified": certs, "seconds": seconds}


def _art_side(net, x, y, patch_sizes, ablation, ablation_size, threshold) -> dict:
    from art.estimators.certification.derandomized_smoothing import TensorFlowV2DeRandomizedSmoothing

    from advpatch.defences import smoothing as certified

    art = TensorFlowV2DeRandomizedSmoothing(
        model=net, nb_classes=int(net.output_shape[-1]), ablation_type=ablation, ablation_size=ablation_size,
        threshold=threshold, logits=False, input_shape=x.shape[1:], channels_first=False, clip_values=(0.0, 1.0))
    # the views ART feeds the model, against advpatch's, at every band position (wrap-around included)
    h, w = x.shape[1:3]
    bands = certified.positions(ablation, (h, w))
    views_identical = all(
        np.array_equal(art.ablator.forward(np.copy(x[:8]), column_pos=q),
                       certified.ablate(x[:8], certified.kept_mask(ablation, ablation_size, q, (h, w))))
        for q in range(bands))
    last = art.ablator.forward(np.ones_like(x[:1]), column_pos=bands - 1)[0]
    last = last[0, :, 0] if ablation == "column" else last[:, 0, 0]
    art.predict(x[:2])  # warm-up (tracing)
    start = time.perf_counter()
    counts = np.asarray(art.predict(x))
    certs, predictions = {}, None
    for p in patch_sizes:
        cert, _, top = art.ablator.certify(counts, size_to_certify=p, label=y)
        certs[p], predictions = np.asarray(cert), np.asarray(top)
    seconds = time.perf_counter() - start
    # ART's own end-to-end API, as a cross-check of the per-image numbers (it re-predicts per size)
    evaluated = {p: [float(v) for v in art.eval_and_certify(x, y, size_to_certify=p, verbose=False)]
                 for p in patch_sizes}
    return {"counts": counts, "predictions": predictions, "certified": certs, "seconds": seconds,
            "views_identical": bool(views_identical), "kept_bands_at_last_position": np.flatnonzero(last).tolist(),
            "eval_and_certify": evaluated, "ablator": art.ablator}


def _bound_check(ablator, patch_sizes, ablation, ablation_size, classes=10, n=20000, seed=0) -> dict:
    """advpatch's ``certify`` and ART's ``ColumnAblator.certify`` on random counts with many ties."""
    from advpatch.defences import smoothing as certified

    counts = np.random.default_rng(seed).integers(0, 12, (n, classes)).astype(np.int64)
    out = {}
    for p in patch_sizes:
        ours = certified.certify(counts, ablation, ablation_size, p)
        cert, _, top = ablator.certify(counts, size_to_certify=p, label=np.zeros(n, np.int64))
        out[p] = {"certified_disagree": int(np.sum(ours != np.asarray(cert))),
                  "prediction_disagree": int(np.sum(certified.predict(counts) != np.asarray(top)))}
    return {"random_count_vectors": n, "per_size": out}


def compare_with_art(model_path: str, test_dataset_path: str, patch_sizes=(1, 2, 3, 4, 5), ablation_size=2,
                     threshold=0.3, max_images=None, ablation="column") -> dict:
    """advpatch vs ART on ``model_path``'s base model and ``test_dataset_path``'s images, with
    ``ablation`` views ('column' or 'row'): certified counts per patch size, disagreements,
    vote-count identity, images per second, and notes."""
    if ablation not in ("column", "row"):
        raise ValueError(f"ART's comparison takes 'column' or 'row' views, got {ablation!r}")
    from advpatch.data.dataset import Dataset, to_float
    from advpatch.models import load_model

    net, _ = load_model(model_path)
    d = Dataset(test_dataset_path).load()
    x, y = to_float(d["x"]), np.asarray(d["y"]).astype(np.int64)
    if max_images:
        x, y = x[:max_images], y[:max_images]
    patch_sizes = [int(p) for p in patch_sizes]
    ours = _advpatch_side(net, x, patch_sizes, ablation, ablation_size, threshold)
    result = {"images": len(x), "ablation": ablation, "ablation_size": ablation_size, "threshold": threshold,
              "advpatch_images_per_s": round(len(x) / ours["seconds"], 1),
              "advpatch_clean_accuracy": float(np.mean(ours["predictions"] == y))}
    try:
        art = _art_side(net, x, y, patch_sizes, ablation, ablation_size, threshold)
    except Exception as error:  # ART could not run: advpatch's side alone, and why
        result["art_failure"] = _failure(error)
        result["per_size"] = {p: {"advpatch_certified": int(ours["certified"][p].sum()),
                                  "advpatch_certified_correct": int((ours["certified"][p]
                                                                     & (ours["predictions"] == y)).sum())}
                              for p in patch_sizes}
        return result
    same_votes = np.all(ours["counts"] == art["counts"], axis=1)
    result.update({
        "art_images_per_s": round(len(x) / art["seconds"], 1),
        "art_clean_accuracy": float(np.mean(art["predictions"] == y)),
        "vote_counts_identical_per_image": bool(same_votes.all()),
        "images_with_different_vote_counts": int((~same_votes).sum()),
        "prediction_disagreements": int(np.sum(ours["predictions"] != art["predictions"])),
        "views_identical_to_advpatch": art["views_identical"],
        "art_wraps_around": art["kept_bands_at_last_position"] == [0, x.shape[2 if ablation == "column" else 1] - 1],
        "art_kept_bands_at_last_position": art["kept_bands_at_last_position"],
        "per_size": {},
    })
    correct = ours["predictions"] == y
    for p in patch_sizes:
        a, b = ours["certified"][p], art["certified"][p]
        result["per_size"][p] = {
            "advpatch_certified": int(a.sum()), "art_certified": int(b.sum()),
            "certified_disagree": int(np.sum(a != b)),
            "prediction_disagree": int(np.sum(ours["predictions"] != art["predictions"])),
            "advpatch_certified_correct": int((a & correct).sum()),
            "art_certified_correct": int((b & (art["predictions"] == y)).sum()),
            "art_eval_and_certify_acc_certacc": art["eval_and_certify"][p]}
    result["bound_check"] = _bound_check(art["ablator"], patch_sizes, ablation, ablation_size)
    result["notes"] = _notes()
    return result


def _notes() -> list:
    """What reading ART's code (the installed version) and running it showed."""
    import art.estimators.certification.derandomized_smoothing.ablators.tensorflow as ablators
    import art.estimators.certification.derandomized_smoothing.tensorflow as smoothing
    import art.estimators.classification.tensorflow as classifier

    return [
        "No error under TF 2.21 / Keras 3: ART runs the Keras 3 model unmodified (channels-last, "
        "input_shape=(28, 28, 1), logits=False since the model ends in a softmax); no wrapper needed.",
        "Encoding: ART appends 1 - x after x, as advpatch does: " + _quote(ablators, "np.concatenate([x, 1.0 - x]"),
        "Wrap-around: a band past the right edge continues at column 0, as in advpatch: "
        + _quote(ablators, "start_of_ablation = column_pos + k - num_of_image_columns") + " / "
        + _quote(ablators, "x[:, :, :, start_of_ablation:column_pos] = 0.0"),
        "Votes: one per class whose probability reaches the threshold (>=), as votes_from: "
        + _quote(smoothing, "outputs >= self.threshold"),
        "Bound: same delta = patch + ablation - 1 and the same tie rule (equality certifies only when the "
        "winner has the smaller index), but checked against the runner-up of tf.math.top_k only "
        "(ties in top_k go to the lower index, so the runner-up is the most demanding rival and this equals "
        "advpatch's check against every class): "
        + _quote(ablators, "certs = (top_class_counts - second_class_counts) >")
        + " / " + _quote(ablators, ") & (top_predicted_class < second_predicted_class)"),
        "Latent bug (not hit here): the channel doubling ignores channels_first, so input_shape=(1, 28, 28) would "
        "become (1, 28, 56): " + _quote(smoothing, "input_shape[2] * 2"),
        "predict ignores batch_size: every view of the whole array goes through the model in one call: "
        + _quote(classifier, "predictions = self._forward_pass(self._model, x_preprocessed"),
        "eval_and_certify returns only the two aggregate accuracies and re-predicts for each size; per-image "
        "certificates come from predict() plus ablator.certify() (used for the timing).",
        "Training only (not used here): a random band start may be the width itself, a duplicate of position 0: "
        + _quote(ablators, "column_pos = random.randint(0, x.shape[3])"),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/benchmarks/art_derandomized.py MODEL_DIR TEST_DATASET_DIR")
    print(json.dumps(compare_with_art(sys.argv[1], sys.argv[2]), indent=1))
