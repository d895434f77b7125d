"""Adaptive attacks: gen_patch with a defence in the loop, and the mnist-defences pipeline, where
every defence row faces the transferred patches and an attacker who knows the defence."""

import json

import numpy as np
import pytest

from advpatch import settings
from advpatch.defences.base import model_defences
from advpatch.defences.preprocessing import registered


def test_gen_patch_optimizes_through_the_defence_it_is_given(tmp_path, outputs):
    """The defence sits in front of the model during optimization (its settings recorded with the
    patches, its name in the step's label); with the same seed, budget, images and placements, the
    patch that knows the defence differs from the one that does not."""
    from advpatch import steps
    from advpatch.patches import PatchSet

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=400)
    steps.train(training_data=str(tmp_path / "train"), model=str(tmp_path / "model"), epochs=8, learning_rate=0.003)
    budget = dict(max_iter=40, num_patch=1, patch_target=5, num_patch_gen_samples=40, patch_location="random",
                  scale_min=0.3, scale_max=0.4)
    adaptive = steps.gen_patch(data=str(tmp_path / "train"), model=str(tmp_path / "model"),
                               patches=str(tmp_path / "adaptive"), defence="spatial_smoothing",
                               spatial_smoothing_window_size=5, **budget)
    settings_ = PatchSet.load(tmp_path / "adaptive").settings
    assert settings_["defence"] == [{"name": "spatial_smoothing", "spatial_smoothing_window_size": 5}]
    assert "against spatial_smoothing" in adaptive.label
    steps.gen_patch(data=str(tmp_path / "train"), model=str(tmp_path / "model"), patches=str(tmp_path / "plain"),
                    **budget)
    assert PatchSet.load(tmp_path / "plain").settings["defence"] == []
    # same seed, same generation images and placements: only the defence in the loop differs
    assert not np.array_equal(PatchSet.load(tmp_path / "plain").patches, PatchSet.load(tmp_path / "adaptive").patches)


@pytest.mark.pipeline
def test_the_defences_pipeline_measures_every_defence_against_an_adaptive_attacker(mnist_folder, tmp_path):
    """`make demo-defences`' pipeline on a small MNIST folder: each adaptive row right after its
    transferred one and its worst-case row after it, and the model trained on the baseline's patches,
    which resists those, falls to patches made against it; where the attacker also picks each image's
    placement, the attack does at least as well as at random placement, row by row."""
    from advpatch.app import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(settings.ENV_TRACKING_URI, raising=False)
        mp.delenv(settings.ENV_OUTPUT_DIR, raising=False)
        mp.chdir(tmp_path)
        assert cli.main(["run", "mnist-defences", "-p", f"data_dir={mnist_folder}", "-p", "max_iter=200",
                         "-p", "masked_training_epochs=60"]) == 0
    results = json.loads((tmp_path / "outputs" / "run" / "results.json").read_text())
    rows = {r["label"]: r for r in results["comparison"]}
    defences = [*[d.label for d in registered().values()], *[d.label for d in model_defences("training").values()]]
    certified = [d.label for d in model_defences("certified").values()]
    assert certified == ["derandomized smoothing (certified)", "PatchCleanser, no masked training (certified)",
                         "PatchCleanser, masked training (certified)"]
    assert list(rows) == ["baseline", "baseline (worst case)",
                          *[name for d in defences for name in (d, f"{d} (adaptive)", f"{d} (worst case)")],
                          *certified]
    for name in list(rows)[-3:]:
        assert rows[name]["clean_accuracy"] > 0.7 and "patched_accuracy" in rows[name], name
    curves = {s["label"]: s["details"]["certified_curve"] for s in results["steps"]
              if "certified_curve" in s["details"]}
    assert len(curves) == 3 and all(sorted(map(int, c)) == list(range(1, 11)) for c in curves.values())
    page = (tmp_path / "outputs" / "run" / "report.html").read_text()
    assert "<h2>Certified accuracy</h2>" in page and page.count("<th>10x10</th>") == 1
    for d in defences:  # the same patches; the search keeps a random-like placement only when nothing beats it
        worst, random = rows[f"{d} (worst case)"], rows[f"{d} (adaptive)"]
        assert worst["targeted_success_rate"] >= random["targeted_success_rate"] - 0.05, d
    assert rows["baseline (worst case)"]["targeted_success_rate"] >= rows["baseline"]["targeted_success_rate"]
    transferred, adaptive = rows["trained on patched data"], rows["trained on patched data (adaptive)"]
    assert adaptive["targeted_success_rate"] > transferred["targeted_success_rate"] + 0.2
    assert adaptive["patched_accuracy"] < transferred["patched_accuracy"] - 0.2
    attacks = [s for s in results["steps"] if s["step"] == "gen_patch"]
    assert len(attacks) == 3 + len(registered()) and sum("against" in a["label"] for a in attacks) == len(registered())
