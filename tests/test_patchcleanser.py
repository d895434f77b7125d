"""PatchCleanser (advpatch.defences.patchcleanser): the mask sets, the double-masking decision, the
certificates and the independent check that a certificate is a lower bound."""

import numpy as np
import pytest

from advpatch.defences import patchcleanser as pc
from advpatch.defences.smoothing import CertifiedError


class Bright:
    """A stand-in classifier: class 1 when a fully bright pixel is visible, else class 0 (a patch
    made of bright pixels turns any blank image into a 1)."""

    def predict_on_batch(self, views):
        return np.eye(2)[(views[..., 0] >= 0.99).any(axis=(1, 2)).astype(int)]


def test_every_patch_position_is_hidden_by_some_mask_and_one_pixel_less_is_not_enough():
    side, starts = pc.windows(28, 5, 6)
    assert (side, starts) == (8, [0, 4, 8, 12, 16, 20])  # stride ceil(24 / 6) = 4, side 5 + 4 - 1
    assert pc.windows(28, 5, 7) == (8, [0, 4, 8, 12, 16, 20])  # ceil(24 / 7) = 4 too
    assert pc.windows(224, 32, 6) == (64, [0, 33, 66, 99, 132, 160])  # the paper's ImageNet setting, last flush
    for p, k in ((1, 6), (5, 6), (5, 3), (10, 6), (28, 1)):
        masks = pc.mask_set((28, 28), p, k)
        assert len(masks) <= k * k and all(len(c) for c in pc.covering(masks, p))
    side, starts = pc.windows(28, 5, 6)
    short = pc.masks_at((28, 28), (side - 1, starts), (side - 1, starts))
    assert not all(len(c) for c in pc.covering(short, 5))
    with pytest.raises(CertifiedError, match=r"masks_per_side must be in \[1, 24\] .* got 25"):
        pc.windows(28, 5, 25)
    with pytest.raises(CertifiedError, match=r"patch size must be in \[1, 28\] .* got 29"):
        pc.mask_set((28, 28), 29, 6)


def _reference(first, table, num_classes):
    """Algorithm 1 of the paper for one image, as written there."""
    counts = np.bincount(first, minlength=num_classes)
    majority = int(np.argmax(counts))
    if (first == majority).all():
        return majority
    for mask in range(len(first)):
        if first[mask] != majority and (table[mask] == first[mask]).all():
            return int(first[mask])
    return majority


def test_the_decision_is_the_papers_algorithm():
    rng = np.random.default_rng(0)
    k, classes = 9, 3
    tables = rng.choice(classes, size=(400, k, k), p=[0.7, 0.2, 0.1])
    tables[::3] = np.where(rng.random((134, k, k)) < 0.9, tables[::3, :1, :1], tables[::3])  # many near-unanimous
    first = tables[:, np.arange(k), np.arange(k)]
    out = pc.decide(first, lambda mask, rows: tables[rows, mask], classes)
    assert out.tolist() == [_reference(f, t, classes) for f, t in zip(first, tables)]
    assert len(set(out.tolist())) > 1


def _images():
    blank = np.zeros((28, 28, 1), np.float32)
    one = blank.copy(); one[14, 14] = 1.0  # noqa: E702  a 1x1 "patch": one mask hides it
    two = blank.copy(); two[1, 1] = two[26, 26] = 1.0  # noqa: E702  no mask hides both, pairs do
    return np.stack([blank, one, two])


def test_double_masking_removes_a_small_patch_and_certifies_only_what_no_patch_can_change():
    x = _images()
    masks = pc.mask_set((28, 28), 5, 6)
    classifier = pc.MaskedClassifier(Bright(), x, masks)
    predicted = pc.predict(classifier, 2)
    assert predicted.tolist() == [0, 0, 1]  # the lone bright pixel is masked away; the two are not
    certified = pc.certify(classifier, predicted)
    assert certified.tolist() == [True, False, False]
    assert pc.worst_case_flips(Bright(), x, predicted, certified, masks, 5, 2).size == 0


def test_a_broken_certificate_is_caught():
    """Two ways to break one: checking only some pairs (the image with two bright pixels agrees
    under every single mask, not under every pair), and masks a pixel too small (some patch
    positions then lie under no mask)."""
    x = _images()
    masks = pc.mask_set((28, 28), 5, 6)
    classifier = pc.MaskedClassifier(Bright(), x, masks)
    predicted = pc.predict(classifier, 2)
    skipped = pc.certify(classifier, predicted, margin=len(masks) * (len(masks) - 1) // 2)
    assert skipped.tolist() == [True, False, True]
    assert pc.worst_case_flips(Bright(), x, predicted, skipped, masks, 5, 2).tolist() == [2]
    side, starts = pc.windows(28, 5, 6)
    short = pc.masks_at((28, 28), (side - 1, starts), (side - 1, starts))
    on_short = pc.MaskedClassifier(Bright(), x, short)
    wrong = pc.certify(on_short, pc.predict(on_short, 2))
    assert wrong[0] and pc.worst_case_flips(Bright(), x, predicted, wrong, short, 5, 2).tolist() == [0]


def test_the_step_defends_a_trained_model_and_every_certificate_holds(tmp_path, outputs):
    """patch_cleanser around a LeNet trained here (briefly), after a short masked training: clean
    evaluation, a certified-accuracy curve, a certificate per image; recomputed from the saved
    model, every certificate at the mask set's size survives the worst-case check."""
    import csv

    from advpatch import steps
    from advpatch.data.dataset import Dataset, to_float
    from advpatch.models import load_model

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=600)
    steps.load_dataset(dataset=str(tmp_path / "test"), source="digits", split="test", max_examples=60)
    steps.train(training_data=str(tmp_path / "train"), testing_data=str(tmp_path / "test"),
                model=str(tmp_path / "model"), epochs=3, register_model=False)
    result = steps.patch_cleanser(
        model=str(tmp_path / "model"), training_data=str(tmp_path / "train"), testing_data=str(tmp_path / "test"),
        defended_model=str(tmp_path / "defended"), certificates=str(tmp_path / "certificates.csv"),
        masked_training_epochs=8, certify_patch_sizes=[1, 5], masks_per_side=4, mask_patch_size=5)
    curve = result.details["certified_curve"]
    assert set(curve) == {"1", "5"} and curve["1"] > 0.1 and result.details["masks_per_side"] == 4
    (evaluation,) = result.evaluations
    assert evaluation.condition == "clean" and evaluation.metrics["accuracy"] > 0.7
    assert evaluation.counts["certified_accuracy_5"][1] == 60
    rows = list(csv.DictReader((tmp_path / "certificates.csv").read_text().splitlines()))
    assert len(rows) == 60 and {r["certified_patch_size"] for r in rows} <= {"0", "1", "5"}
    net, info = load_model(tmp_path / "defended")
    assert info.provenance["patch_cleanser"]["masked_training_epochs"] == 8
    x = to_float(Dataset(tmp_path / "test").take(range(60)))
    predicted = np.array([int(r["predicted"]) for r in rows])
    certified = np.array([int(r["certified_patch_size"]) >= 5 for r in rows])
    assert certified.any()
    masks = pc.mask_set((28, 28), 5, 4)
    assert pc.worst_case_flips(net, x, predicted, certified, masks, 5, 10).size == 0
    # the defence's classifier (found in the registry, around the saved model) gives the step's
    # predictions and certificates, image by image
    from advpatch.defences.base import registered
    from advpatch.models.classifier import CertifiedPredictor, Classifier

    defended = registered("certified")["patch_cleanser_masked"].classifier(
        Classifier(net, info), {"mask_patch_size": 5, "masks_per_side": 4})
    assert isinstance(defended, CertifiedPredictor)
    assert (defended.predict_labels(x) == predicted).all() and (defended.certify(x, 5) == certified).all()
    # infer runs the saved model as the PatchCleanser classifier (its model.json names the defence)
    steps.infer(data=str(tmp_path / "test"), model=str(tmp_path / "defended"), predictions=str(tmp_path / "p.csv"))
    inferred = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert [int(r["predicted"]) for r in inferred] == predicted.tolist()
    # bad settings: a clear error before TensorFlow is imported, and nothing written
    import re

    from conftest import error_before_tensorflow

    cases = [(dict(masks_per_side=30), r"masks_per_side must be in \[1, 24\] for 5-pixel patches on 28 pixels, got 30"),
             (dict(certify_patch_sizes=[3, 40]), r"certify_patch_sizes \[40\] do not fit 28x28 images"),
             (dict(mask_patch_size=0), r"mask_patch_size must be .*got 0"),
             (dict(model=str(tmp_path / "test")), r"model"),
             (dict(masked_training_architecture="lenet", masked_training_epochs=2),
              r"masked_training_architecture must be one of 'le_net', .*'conv_net'.*, got 'lenet'"),
             (dict(masked_training_architecture="conv_net"),
              r"masked_training_architecture='conv_net' trains a fresh network, so it needs "
              r"masked_training_epochs > 0, got 0"),
             (dict(masked_training_architecture="resnet50", masked_training_epochs=2),
              r"model_architecture 'resnet50' needs images of at least 32x32"),
             (dict(lr_decay=1.5), r"lr_decay must be in \[0, 1\], got 1.5")]
    for case, message in cases:
        args = {"model": str(tmp_path / "model"), "training_data": str(tmp_path / "train"),
                "testing_data": str(tmp_path / "test"), "defended_model": str(tmp_path / "bad"),
                "certificates": str(tmp_path / "bad.csv"), **case}
        out = error_before_tensorflow("patch_cleanser", args)
        assert re.search(message, out), (case, out)
        assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.csv").exists()


def test_masked_training_can_start_from_a_fresh_wider_network(tmp_path, outputs):
    """masked_training_architecture: the defended model is a fresh network of that architecture
    trained on masked views (the given model fixes only the classes and the image shape), and its
    certificates hold in the worst case."""
    from advpatch import steps
    from advpatch.data.dataset import Dataset, to_float
    from advpatch.models import load_model

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=300)
    steps.load_dataset(dataset=str(tmp_path / "test"), source="digits", split="test", max_examples=40)
    steps.train(training_data=str(tmp_path / "train"), testing_data=str(tmp_path / "test"),
                model=str(tmp_path / "model"), epochs=1, register_model=False)
    result = steps.patch_cleanser(
        model=str(tmp_path / "model"), training_data=str(tmp_path / "train"), testing_data=str(tmp_path / "test"),
        defended_model=str(tmp_path / "defended"), certificates=str(tmp_path / "certificates.csv"),
        masked_training_epochs=6, masked_training_architecture="conv_net", certify_patch_sizes=[3],
        masks_per_side=3, mask_patch_size=3)
    assert result.details["masked_training_architecture"] == "conv_net"
    net, info = load_model(tmp_path / "defended")
    assert info.architecture == "conv_net" and info.class_names == [str(i) for i in range(10)]
    x = to_float(Dataset(tmp_path / "test").take(range(40)))
    masks = pc.mask_set((28, 28), 3, 3)
    predicted = pc.predict(pc.MaskedClassifier(net, x, masks), 10)
    certified = pc.certify(pc.MaskedClassifier(net, x, masks), predicted)
    assert pc.worst_case_flips(net, x, predicted, certified, masks, 3, 10).size == 0
