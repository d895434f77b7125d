"""Certified defences, measured: certified accuracy, certification throughput and the lower-bound
check on the whole test set, for derandomized smoothing and PatchCleanser (without and with masked
training).

    make bench      (or: python tests/benchmarks/bench_certified.py [--data SOURCE] [--work DIR])

On ``--data`` (load_dataset's source; default the embedded digits, 1,438 training and 359 test
images, 28x28), the steps run as ``mnist-defences`` runs them: a LeNet baseline (train, 15 epochs),
derandomized_smoothing (column 2, threshold 0.2, 300 epochs of 128-image batches), patch_cleanser around the baseline
(6 x 6 masks for 5x5 patches) without masked training and with 40 epochs of it. Then, from the
saved models:

* certified accuracy at each patch side 1..10 (the steps' own figures);
* certification throughput: test images per second from the images to the certificates (every
  view or every mask pair the certificate needs), beside a reference measured in the same run: for
  derandomized smoothing, ART's ``TensorFlowV2DeRandomizedSmoothing`` on the same base model, both
  timed alike by ``art_derandomized.py`` (which also compares votes and certificates image by
  image), certifying every patch side; for PatchCleanser, at 5x5, against the base model's plain
  inference (the ratio is the cost of the certificate);
* the lower-bound check on every test image certified at each side: derandomized smoothing's
  :func:`advpatch.defences.smoothing.worst_case_flips` (every patch position, every view it touches given to
  the best rival) and PatchCleanser's :func:`advpatch.defences.patchcleanser.worst_case_flips` (the pair
  predictions recomputed, every prediction no covering mask protects given to a rival); both must
  find nothing.

Prints a markdown table and merges its figures into outputs/bench/results.json under "certified".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

SIZES = list(range(1, 11))
HERE = Path(__file__).resolve().parent


def run_steps(work: Path, source: str, masked_epochs: int) -> dict:
    from advpatch import steps

    paths = {k: str(work / k) for k in ("train", "test", "baseline", "ds", "pc0", "pc1")}
    steps.load_dataset(dataset=paths["train"], source=source, split="train")
    steps.load_dataset(dataset=paths["test"], source=source, split="test")
    steps.train(training_data=paths["train"], testing_data=paths["test"], model=paths["baseline"], epochs=15,
                batch_size=32, learning_rate=0.002, register_model=False)
    started = time.perf_counter()
    ds = steps.derandomized_smoothing(training_data=paths["train"], testing_data=paths["test"], model=paths["ds"],
                                      certificates=str(work / "ds.csv"), certify_patch_sizes=SIZES)
    seconds = {"derandomized smoothing": time.perf_counter() - started}
    results = {"derandomized smoothing": ds}
    for key, epochs, label in (("pc0", 0, "PatchCleanser, no masked training"),
                               ("pc1", masked_epochs, "PatchCleanser, masked training")):
        started = time.perf_counter()
        results[label] = steps.patch_cleanser(
            model=paths["baseline"], training_data=paths["train"], testing_data=paths["test"],
            defended_model=paths[key], certificates=str(work / f"{key}.csv"), masked_training_epochs=epochs,
            certify_patch_sizes=SIZES)
        seconds[label] = time.perf_counter() - started
    return {"paths": paths, "results": results, "step_seconds": seconds}


def derandomized(paths: dict) -> dict:
    from advpatch.data.dataset import Dataset, to_float
    from advpatch.defences import smoothing as certified
    from advpatch.models import load_model

    net, _ = load_model(paths["ds"])
    x = to_float(Dataset(paths["test"]).load()["x"])
    started = time.perf_counter()
    votes = certified.votes_from(certified.view_probabilities(net, x, "column", 2), 0.2)
    counts = certified.counts(votes)
    certified.certify(counts, "column", 2, 5)
    seconds = time.perf_counter() - started
    checked, flips, check_seconds = {}, {}, time.perf_counter()
    for size in SIZES:
        proof = certified.certify(counts, "column", 2, size)
        checked[size] = int(proof.sum())
        flips[size] = int(certified.worst_case_flips(votes, "column", 2, size, x.shape[1:3], proof).size)
    return {"images": len(x), "certify_seconds_5": seconds, "images_per_second": len(x) / seconds,
            "worst_case": {"checked": checked, "flips": flips, "seconds": time.perf_counter() - check_seconds}}


def cleanser(paths: dict, key: str) -> dict:
    import numpy as np

    from advpatch.data.dataset import Dataset, to_float
    from advpatch.defences import patchcleanser as pc
    from advpatch.models import load_model

    net, info = load_model(paths[key])
    x = to_float(Dataset(paths["test"]).load()["x"])
    classes = len(info.class_names)
    net.predict_on_batch(x[:8])
    started = time.perf_counter()
    for s in range(0, len(x), 512):
        net.predict_on_batch(x[s:s + 512])
    plain = len(x) / (time.perf_counter() - started)
    started = time.perf_counter()
    masks = pc.mask_set(x.shape[1:3], 5, 6)
    predicted = pc.predict(pc.MaskedClassifier(net, x, masks), classes)
    pc.certify(pc.MaskedClassifier(net, x, masks), predicted)
    seconds = time.perf_counter() - started
    checked, flips, check_seconds = {}, {}, time.perf_counter()
    for size in SIZES:
        at = pc.mask_set(x.shape[1:3], size, 6)
        proof = pc.certify(pc.MaskedClassifier(net, x, at), predicted)
        checked[size] = int(proof.sum())
        flips[size] = int(pc.worst_case_flips(net, x, predicted, proof, at, size, classes).size)
    return {"images": len(x), "certify_seconds_5": seconds, "images_per_second": len(x) / seconds,
            "plain_inference_images_per_second": plain, "forward_passes_per_image_ratio": plain / (len(x) / seconds),
            "masks": len(masks), "worst_case": {"checked": checked, "flips": flips,
                                                     "seconds": time.perf_counter() - check_seconds},
            "predicted_accuracy": float(np.mean(predicted == Dataset(paths["test"]).load()["y"]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="load_dataset's source (default: the embedded digits)")
    parser.add_argument("--work", default="outputs/bench/certified-work", help="models and datasets (deleted)")
    parser.add_argument("--output", default="outputs/bench", help="where results.json is")
    parser.add_argument("--masked-epochs", type=int, default=40, help="PatchCleanser's masked training (40)")
    parser.add_argument("--skip-art", action="store_true", help="no ART reference")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "ADVPATCH_OUTPUT_DIR": str(work),
                       "ADVPATCH_EXPERIMENT": "bench-certified", "TF_CPP_MIN_LOG_LEVEL": "2"})
    started = time.perf_counter()
    ran = run_steps(work, args.data, args.masked_epochs)
    paths = ran["paths"]
    measured = {"derandomized smoothing": derandomized(paths),
                "PatchCleanser, no masked training": cleanser(paths, "pc0"),
                "PatchCleanser, masked training": cleanser(paths, "pc1")}
    art = None
    if not args.skip_art:
        sys.path.insert(0, str(HERE))
        from art_derandomized import compare_with_art

        art = compare_with_art(paths["ds"], paths["test"], patch_sizes=tuple(SIZES), threshold=0.2)
    rows = {}
    for name, result in ran["results"].items():
        clean = next(e for e in result.evaluations if e.condition == "clean")
        m = measured[name]
        speed, reference = m["images_per_second"], m.get("plain_inference_images_per_second")
        if name.startswith("derandomized"):  # both timed alike by compare_with_art: views, votes, every size
            speed, reference = (art or {}).get("advpatch_images_per_s", speed), (art or {}).get("art_images_per_s")
        rows[name] = {"clean_accuracy": clean.metrics["accuracy"], "certified_accuracy": result.details["certified_curve"],
                      "images_per_second": speed, "reference_images_per_second": reference,
                      "certify_at_5_images_per_second": m["images_per_second"],
                      "ratio": m["images_per_second"] / reference if reference else None,
                      "reference": "ART TensorFlowV2DeRandomizedSmoothing" if name.startswith("derandomized")
                      else "the base model's plain inference", "step_seconds": ran["step_seconds"][name],
                      "worst_case": m["worst_case"],
                      "sound": all(v == 0 for v in m["worst_case"]["flips"].values())}
    out = {"data": args.data, "images": measured["derandomized smoothing"]["images"], "defences": rows, "art": art,
           "raw": measured, "seconds": time.perf_counter() - started}
    print("\n| defence | clean | certified 1x1 / 3x3 / 5x5 / 7x7 | certification (img/s) | reference (img/s) | "
          "ratio | worst case: certified images checked, flips |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        c = r["certified_accuracy"]
        ref = f"{r['reference_images_per_second']:.0f} ({r['reference']})" if r["reference_images_per_second"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        print(f"| {name} | {r['clean_accuracy']:.3f} | {c['1']:.3f} / {c['3']:.3f} / {c['5']:.3f} / {c['7']:.3f} | "
              f"{r['images_per_second']:.0f} | {ref} | {ratio} | {sum(r['worst_case']['checked'].values())}, "
              f"{sum(r['worst_case']['flips'].values())} |")
    path = Path(args.output) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError:
            merged = {}
    merged["certified"] = out
    path.write_text(json.dumps(merged, indent=1, default=float))
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nwritten: {path} (key 'certified'), {out['seconds']:.0f} s")
    return 0 if all(r["sound"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
