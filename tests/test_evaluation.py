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


def test_wilson_interval_against_hand_computed_values():
    from advpatch.evaluation import rate, wilson_interval

    # 8/10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.716737, half 1.96 * sqrt(0.016 + 0.009604) / 1.38416
    # = 0.226580 (textbook: 0.4902-0.9433)
    low, high = wilson_interval(8, 10, z=1.96)
    assert (low, high) == (pytest.approx(0.490157, abs=2e-6), pytest.approx(0.943319, abs=2e-6))
    # at 0 and n the interval stays inside [0, 1] and is not degenerate (the normal approximation's is)
    assert wilson_interval(0, 10, z=1.96) == (0.0, pytest.approx(3.8416 / 13.8416))
    assert wilson_interval(10, 10, z=1.96) == (pytest.approx(10 / 13.8416), 1.0)
    r = rate(983, 1000)
    assert r["value"] == 0.983 and (r["successes"], r["count"], r["interval"]) == (983, 1000, "wilson-95")
    assert r["low"] < 0.983 < r["high"] and r["high"] - r["low"] == pytest.approx(0.0162, abs=5e-4)
    assert np.isnan(rate(0, 0)["value"]) and np.isnan(rate(0, 0)["low"])


def test_wilson_interval_always_holds_the_observed_rate():
    from advpatch.evaluation import rate

    for n in (1, 3, 7, 10, 72, 80, 1000):  # a bound a hair past k/n broke the chart's error bars once
        for k in range(n + 1):
            r = rate(k, n)
            assert 0.0 <= r["low"] <= r["value"] <= r["high"] <= 1.0, (k, n)


def test_wilson_interval_covers_the_truth_about_95_percent_of_the_time():
    from advpatch.evaluation import wilson_interval

    rng = np.random.default_rng(0)
    for p, n in ((0.5, 40), (0.95, 200), (0.1, 1000)):
        ks = rng.binomial(n, p, 4000)
        covered = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in ks)])
        assert 0.93 <= covered <= 0.975, (p, n, covered)


def test_decimals_follow_the_count_and_the_table_shows_the_interval():
    from advpatch.evaluation import decimals, rate
    from advpatch.report import format_rate

    assert [decimals(n) for n in (0, 10, 100, 101, 1000, 1001, 10**6)] == [2, 2, 2, 3, 3, 4, 4]
    assert format_rate(rate(983, 1000)) == "0.983 (0.973-0.989)"
    assert format_rate(rate(9, 10), with_interval=False) == "0.90"


def test_rate_counts_by_hand():
    from advpatch.evaluation import patch_metrics, rate_counts

    y = np.array([0, 1, 2, 3, 3, 1])
    pred = np.array([0, 3, 3, 3, 1, 1])
    patched = np.array([0, 1, 1, 1, 1, 0])
    targets = np.array([3, 3, 3, 3, 3, 3])
    counts = rate_counts(y, pred, patched, targets)
    # correct: 0, 3, 1 (indices 0, 3, 5); patched 1..4: correct only 3; eligible: patched, label != 3 -> 1, 2
    assert counts == {"accuracy": (3, 6), "accuracy_patched": (1, 4), "accuracy_unpatched": (2, 2),
                      "targeted_success_rate": (2, 2)}
    assert rate_counts(y, pred) == {"accuracy": (3, 6)}
    m = patch_metrics(y, pred, patched, targets)
    assert (m["accuracy_patched"], m["accuracy_unpatched"], m["targeted_success_rate"]) == (0.25, 1.0, 1.0)


def test_average_ranks_equal_scipy():
    from scipy.stats import rankdata

    from advpatch.evaluation import average_ranks

    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 100, 1000):
        values = rng.integers(0, max(2, n // 5), n).astype(float)  # many ties
        np.testing.assert_array_equal(average_ranks(values), rankdata(values))
        values = rng.random(n)
        np.testing.assert_array_equal(average_ranks(values), rankdata(values))


def test_uint8_distances_are_the_float_ones_from_the_changed_pixels_alone():
    """deploy_patch measures uint8 images from the pixels a patch changed: the same l_inf, l1, l2,
    cosine and Wasserstein figures as the float computation over every pixel (sorting included)."""
    from advpatch.evaluation import distance_stats

    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (70, 20, 20, 3), dtype=np.uint8)
    patched = clean.copy()
    patched[:60, 5:12, 5:12] = rng.integers(0, 256, (60, 7, 7, 3))
    patched[65] = 0  # an all-black image: cosine falls back to 1 where a norm is zero
    exact = distance_stats(clean, patched)
    floats = distance_stats(clean.astype(np.float64) / 255, patched.astype(np.float64) / 255)
    for name, values in floats.items():
        np.testing.assert_allclose(exact[name], values, rtol=1e-9, atol=1e-12, err_msg=name)
    assert exact["l1"][62] == exact["wasserstein"][62] == 0 and exact["cosine_similarity"][62] == 1
