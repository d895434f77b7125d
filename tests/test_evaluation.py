import numpy as np
import pytest

from advpatch.evaluation import classification_metrics, confusion_matrix


def test_metrics_against_hand_computed_values():
    # true:  0 0 0 1 1 2
    # pred:  0 0 1 1 2 2
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.3, 0.6, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.4, 0.5],
            [0.2, 0.2, 0.6],
        ]
    )
    m = classification_metrics(y, p)
    np.testing.assert_array_equal(confusion_matrix(y, p.argmax(1), 3), [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    # precision: c0 2/2, c1 1/2, c2 1/2; recall: c0 2/3, c1 1/2, c2 1/1
    prec = np.array([1.0, 0.5, 0.5])
    rec = np.array([2 / 3, 0.5, 1.0])
    f1 = 2 * prec * rec / (prec + rec)  # 0.8, 0.5, 2/3
    support = np.array([3, 2, 1]) / 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.6, 0.3, 0.7, 0.4, 0.6])))
    assert m["precision_macro"] == pytest.approx(2 / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["precision_weighted"] == pytest.approx((prec * support).sum())
    assert m["recall_weighted"] == pytest.approx(4 / 6)  # weighted recall is accuracy
    assert m["f1_weighted"] == pytest.approx((f1 * support).sum())
    # AUC class 0: positives {.8,.6,.3} vs negatives {.2,.1,.2}: all 9 pairs ordered -> 1
    # class 1: positives {.7,.4} vs negatives {.1,.3,.6,.2}: .7 beats 4, .4 beats 3 -> 7/8
    # class 2: positive {.6} vs {.1,.1,.1,.1,.5}: 5/5 -> 1
    assert m["auc_macro_ovr"] == pytest.approx((1 + 7 / 8 + 1) / 3)
    assert m["num_examples"] == 6


def test_auc_counts_ties_as_half():
    y = np.array([0, 1])
    p = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert classification_metrics(y, p)["auc_macro_ovr"] == pytest.approx(0.5)


def test_against_scikit_learn_on_random_predictions():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    p = rng.dirichlet(np.ones(5), 300)
    m = classification_metrics(y, p)
    pred = p.argmax(1)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["precision_weighted"] == pytest.approx(skm.precision_score(y, pred, average="weighted"))
    assert m["auc_macro_ovr"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert m["loss"] == pytest.approx(skm.log_loss(y, p))
