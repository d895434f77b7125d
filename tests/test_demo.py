"""`make demo`: the seed notebook's whole MNIST experiment, end to end through kfp.local."""

import json

import pytest

from advpatch import settings


@pytest.mark.slow
def test_demo_runs_the_full_experiment_on_a_mnist_layout_folder(mnist_folder, tmp_path, monkeypatch, capsys):
    """What `make demo DATA=...` runs: every row of the seed notebook's experiment."""
    from advpatch.app import cli

    monkeypatch.delenv(settings.ENV_TRACKING_URI, raising=False)
    monkeypatch.delenv(settings.ENV_OUTPUT_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--data", str(mnist_folder)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "outputs" / "demo" / "results.json").read_text())
    rows = {r["label"]: r for r in results["comparison"]}
    assert list(rows) == ["baseline", "spatial smoothing", "JPEG compression", "Gaussian noise",
                          "trained on patched data", "PGD adversarial training"]
    assert [(e["row"], e["condition"]) for e in results["evaluations"]] == [
        (row, condition) for row in rows for condition in ("clean", "patched")]
    for label, row in rows.items():
        assert {"clean_accuracy", "patched_accuracy", "targeted_success_rate"} <= set(row), label
        assert f"| {label}" in printed
    assert rows["baseline"]["patched_accuracy"] < rows["baseline"]["clean_accuracy"] - 0.3
    # training on patched images (the attacker's own patches) recovers most of the accuracy
    assert rows["trained on patched data"]["patched_accuracy"] > rows["baseline"]["patched_accuracy"] + 0.2
    trains = [s for s in results["steps"] if s["step"] == "train"]
    assert [t["details"]["model_uri"] for t in trains] == [
        "models:/mnist_baseline_le_net/1", "models:/mnist_patched_le_net/1", "models:/mnist_pgd_le_net/1"]
    assert trains[2]["metrics"]["test_pgd_accuracy"] > trains[0]["metrics"]["test_pgd_accuracy"]
