"""Derandomized smoothing's certificates (advpatch.defences.smoothing): the views, the bound, and the
independent check that a certificate is a lower bound."""

import numpy as np
import pytest

from advpatch.defences import smoothing as certified


def test_views_keep_a_band_or_a_block_wrapping_around_and_mark_what_was_removed():
    column = certified.kept_mask("column", 3, 26, (4, 28))
    assert column.all(axis=0).tolist() == [c in (26, 27, 0) for c in range(28)] and column.sum() == 12
    block = certified.kept_mask("block", 2, 3 * 5 + 4, (5, 5))  # top-left corner (3, 4): wraps to column 0
    assert sorted(zip(*np.nonzero(block))) == [(3, 0), (3, 4), (4, 0), (4, 4)]
    x = np.array([[[[0.0], [0.25]]]], np.float32)  # one 1x2 grey image
    view = certified.ablate(x, np.array([[True, False]]))
    assert view.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]  # black kept is (0, 1); removed is (0, 0)
    assert certified.positions("column", (28, 28)) == 28 and certified.positions("block", (28, 28)) == 784
    assert certified.delta("column", 4, 5) == 8 and certified.delta("block", 4, 5) == 64
    with pytest.raises(certified.CertifiedError, match=r"ablation_size must be in \[1, 28\] .* got 29"):
        certified.kept_mask("column", 29, 0, (28, 28))


def test_the_bound_and_its_tie_rule():
    """delta 6 (column, b 2, p 5): the winner must lead every other class by more than 2 x 6 votes,
    or by exactly 12 when it has the smaller index (a tie goes to it)."""
    counts = np.array([[20, 8, 0], [8, 20, 0], [21, 8, 0], [19, 8, 1]])
    assert certified.predict(counts).tolist() == [0, 1, 0, 0]
    assert certified.certify(counts, "column", 2, 5).tolist() == [True, False, True, False]
    assert certified.certify(counts, "column", 2, 5, margin=-1).tolist() == [True, True, True, True]


@pytest.mark.parametrize("kind,size,patch,hw", [("column", 4, 5, (28, 28)), ("column", 2, 3, (12, 12)),
                                                ("row", 2, 3, (12, 12)), ("cross", 2, 3, (12, 12)),
                                                ("cross", 2, 5, (28, 28)), ("block", 3, 2, (12, 12))])
def test_certificates_survive_the_worst_case_and_a_broken_one_does_not(kind, size, patch, hw):
    """View predictions with every margin around the bound: no patch position, with every view it
    touches voting for the best rival, changes a certified prediction; with the bound off by one,
    the check flips some of the images it wrongly certifies, and no other (the check uses the real
    views, so an image whose touched views already vote for the rival is not flipped: the bound is
    the worst case over where the votes fall)."""
    n_views = certified.positions(kind, hw)
    rng = np.random.default_rng(0)
    d = certified.delta(kind, size, patch)
    views = []
    for lead in range(max(0, 2 * d - 6), min(n_views, 2 * d + 6)):
        for winner, rival in ((0, 1), (1, 0)):
            winner_votes = (n_views + lead) // 2
            votes = np.full(n_views, rival)
            votes[:winner_votes] = winner  # together, so a patch can touch winner votes only
            votes[rng.permutation(n_views)[:2]] = 2  # and two stray votes for a third class
            views.append(votes)
    views = certified.one_hot(np.array(views, np.int32), 3)
    counts = certified.counts(views)
    proof = certified.certify(counts, kind, size, patch)
    assert proof.any() and not proof.all()
    assert certified.worst_case_flips(views, kind, size, patch, hw, proof).size == 0
    broken = certified.certify(counts, kind, size, patch, margin=-1)
    flipped = certified.worst_case_flips(views, kind, size, patch, hw, broken)
    assert flipped.size and set(flipped) <= set(np.flatnonzero(broken & ~proof))


def test_thresholded_votes_let_a_view_vote_for_several_classes_or_none():
    probs = np.array([[[0.5, 0.45, 0.05], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]]], np.float32)
    assert certified.votes_from(probs).astype(int).tolist() == [[[1, 0, 0], [0, 0, 1], [1, 0, 0]]]
    assert certified.votes_from(probs, 0.4).astype(int).tolist() == [[[1, 1, 0], [0, 0, 1], [0, 0, 0]]]
    assert certified.counts(certified.votes_from(probs, 0.4)).tolist() == [[1, 1, 1]]
    with pytest.raises(certified.CertifiedError, match=r"threshold must be in \[0, 1\), got 1.0"):
        certified.votes_from(probs, 1.0)


def test_the_step_trains_certifies_and_every_certificate_holds(tmp_path, outputs):
    """derandomized_smoothing on the embedded digits (a short training): clean and patched
    evaluations, a certified-accuracy curve that falls with the patch size, a certificate per
    image; recomputed from the saved base model, every certificate survives the worst-case check,
    and the bound off by one does not."""
    import csv

    from advpatch import steps
    from advpatch.data.dataset import Dataset, to_float
    from advpatch.models import load_model

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=600)
    steps.load_dataset(dataset=str(tmp_path / "test"), source="digits", split="test", max_examples=120)
    result = steps.derandomized_smoothing(
        training_data=str(tmp_path / "train"), testing_data=str(tmp_path / "test"), model=str(tmp_path / "base"),
        certificates=str(tmp_path / "certificates.csv"), epochs=15, certify_patch_sizes=[1, 3, 5])
    curve = result.details["certified_curve"]
    assert curve["1"] >= curve["3"] >= curve["5"] and curve["1"] > 0.3
    (evaluation,) = result.evaluations
    assert evaluation.condition == "clean" and evaluation.metrics["accuracy"] > 0.7
    assert evaluation.counts["certified_accuracy_3"][1] == 120
    rows = list(csv.DictReader((tmp_path / "certificates.csv").read_text().splitlines()))
    assert len(rows) == 120 and {r["certified_patch_size"] for r in rows} <= {"0", "1", "3", "5"}
    net, info = load_model(tmp_path / "base")
    assert info.input_shape == (28, 28, 2) and info.provenance["ablation"] == "column"
    x = to_float(Dataset(tmp_path / "test").take(range(120)))
    votes = certified.votes_from(certified.view_probabilities(net, x, "column", 2), result.details["vote_threshold"])
    counts = certified.counts(votes)
    for size in (1, 3, 5):
        proof = certified.certify(counts, "column", 2, size)
        assert certified.worst_case_flips(votes, "column", 2, size, (28, 28), proof).size == 0
    broken = certified.certify(counts, "column", 2, 3, margin=-1)
    assert certified.worst_case_flips(votes, "column", 2, 3, (28, 28), broken).size > 0
    # the defence's classifier (found in the registry, around the saved model) gives the step's
    # predictions and certificates, image by image
    from advpatch.defences.base import registered
    from advpatch.models.classifier import CertifiedPredictor, Classifier

    smoothed = registered("certified")["derandomized_smoothing"].classifier(
        Classifier(net, info), {"ablation": "column", "ablation_size": 2,
                                "vote_threshold": result.details["vote_threshold"]})
    assert isinstance(smoothed, CertifiedPredictor)
    assert [int(r["predicted"]) for r in rows] == smoothed.predict_labels(x).tolist()
    radius = np.array([int(r["certified_patch_size"]) for r in rows])
    for size in (1, 3, 5):
        assert (smoothed.certify(x, size) == (radius >= size)).all()
    # infer runs the saved model as the smoothed classifier (its model.json names the defence);
    # other steps refuse it, naming why
    steps.infer(data=str(tmp_path / "test"), model=str(tmp_path / "base"), predictions=str(tmp_path / "p.csv"))
    inferred = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert [r["predicted"] for r in inferred] == [r["predicted"] for r in rows]
    from advpatch.errors import ModelError

    with pytest.raises(ModelError, match="the model is the base of certified defence 'derandomized_smoothing': "
                                             "only infer runs it"):
        steps.gen_patch(data=str(tmp_path / "test"), model=str(tmp_path / "base"), patches=str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_arts_derandomized_smoothing_agrees_image_by_image(tmp_path, outputs):
    """ART's TensorFlowV2DeRandomizedSmoothing on the same base model and images: the same views,
    votes, predictions and certificates, with column views and with row views
    (tests/benchmarks/art_derandomized.py; `make bench` runs it on the whole test set)."""
    import sys
    from pathlib import Path

    from advpatch import steps

    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from art_derandomized import compare_with_art

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=400)
    steps.load_dataset(dataset=str(tmp_path / "test"), source="digits", split="test", max_examples=80)
    steps.derandomized_smoothing(training_data=str(tmp_path / "train"), testing_data=str(tmp_path / "test"),
                                 model=str(tmp_path / "base"), certificates=str(tmp_path / "c.csv"), epochs=10,
                                 certify_patch_sizes=[1, 3])
    found = compare_with_art(str(tmp_path / "base"), str(tmp_path / "test"), patch_sizes=(1, 3, 5), threshold=0.2)
    assert "art_failure" not in found, found.get("art_failure")
    assert found["vote_counts_identical_per_image"] and found["prediction_disagreements"] == 0
    assert found["views_identical_to_advpatch"] and found["art_wraps_around"]
    assert all(s["certified_disagree"] == 0 for s in found["per_size"].values())
    assert any(s["advpatch_certified"] for s in found["per_size"].values())
    # row views (ART's row mode; one half of a cross model's views): the same views and votes too
    rows = compare_with_art(str(tmp_path / "base"), str(tmp_path / "test"), patch_sizes=(3,), threshold=0.2,
                            ablation="row")
    assert rows["views_identical_to_advpatch"] and rows["art_wraps_around"] and rows["vote_counts_identical_per_image"]
    assert rows["per_size"][3]["certified_disagree"] == 0


def test_row_and_cross_views_and_their_bound_hold_in_the_worst_case():
    """``row`` keeps a band of rows; ``cross`` takes every column band, then every row band, and a
    square patch reaches as many of each (2 (p + b - 1)). On votes where the winner holds every view
    but a few scattered ones, no certified image is flipped, and with the bound off by one some are."""
    row = certified.kept_mask("row", 2, 27, (28, 28))
    assert row.all(axis=1).tolist() == [r in (27, 0) for r in range(28)] and row.sum() == 56
    cross = [certified.kept_mask("cross", 2, q, (28, 28)) for q in (3, 28 + 3)]
    assert cross[0].all(axis=0)[3:5].all() and cross[1].all(axis=1)[3:5].all() and (cross[0] == cross[1].T).all()
    assert certified.positions("cross", (28, 20)) == 48 and certified.delta("cross", 2, 5) == 12
    assert certified.delta("row", 2, 5) == 6
    rng = np.random.default_rng(0)
    n, views = 400, certified.positions("cross", (28, 28))
    winner_views = rng.integers(30, views + 1, n)  # how many views vote for class 0; the rest for class 1
    view_votes = np.ones((n, views), np.int64)
    for i, k in enumerate(winner_views):
        view_votes[i, rng.permutation(views)[:k]] = 0
    votes = certified.one_hot(view_votes, 3)
    counts = certified.counts(votes)
    proof = certified.certify(counts, "cross", 2, 5)
    assert proof.any() and not proof.all()
    assert certified.worst_case_flips(votes, "cross", 2, 5, (28, 28), proof).size == 0
    broken = certified.certify(counts, "cross", 2, 5, margin=-1)
    assert certified.worst_case_flips(votes, "cross", 2, 5, (28, 28), broken).size > 0


def test_bad_settings_fail_before_tensorflow_and_write_nothing(tmp_path, outputs):
    """The new settings (row and cross views, the learning-rate decay, conv_net) are checked with the
    rest, before TensorFlow is imported: a clear error and nothing written."""
    import re

    from conftest import error_before_tensorflow

    from advpatch import steps

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=40)
    steps.load_dataset(dataset=str(tmp_path / "test"), source="digits", split="test", max_examples=10)
    cases = [(dict(ablation="diagonal"), r"ablation must be one of 'column', 'row', 'cross', 'block', got 'diagonal'"),
             (dict(ablation="cross", ablation_size=29), r"ablation_size must be in \[1, 28\] for 28x28 images, got 29"),
             (dict(lr_decay=-0.1), r"lr_decay must be in \[0, 1\], got -0.1"),
             (dict(model_architecture="conv_net", learning_rate=0), r"learning_rate must be a number > 0, got 0"),
             (dict(model_architecture="convnet"), r"model_architecture must be one of .*'conv_net'.*got 'convnet'")]
    for case, message in cases:
        args = {"training_data": str(tmp_path / "train"), "testing_data": str(tmp_path / "test"),
                "model": str(tmp_path / "bad"), "certificates": str(tmp_path / "bad.csv"), **case}
        out = error_before_tensorflow("derandomized_smoothing", args)
        assert re.search(message, out), (case, out)
        assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.csv").exists()
