"""Per-slice metrics (core/metrics.py) and the clusters' per-class recall, against hand-computed small cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from core import metrics, plots
from core.analysis import cluster_summary


def test_per_class_report_by_hand():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 0, 1]
    report = metrics.per_class_report(labels, preds, ["a", "b", "c"]).set_index("class")
    # a: predicted 3 times, 2 right; 3 labelled, 2 found. b: predicted 3 times, 1 right; 2 labelled, 1 found.
    # c: never predicted (precision undefined), 1 labelled, 0 found.
    assert report.loc["a", ["support", "predicted"]].tolist() == [3, 3]
    assert report.loc["a", "precision"] == pytest.approx(2 / 3) and report.loc["a", "recall"] == pytest.approx(2 / 3)
    assert report.loc["b", "precision"] == pytest.approx(1 / 3) and report.loc["b", "recall"] == pytest.approx(1 / 2)
    assert report.loc["b", "f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
    assert np.isnan(report.loc["c", "precision"]) and report.loc["c", "recall"] == 0.0
    assert report.loc["macro average", "recall"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert report.loc["macro average", "precision"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # c's undefined one left out
    assert report.loc["weighted average", "recall"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 0) / 6)
    assert report.loc["weighted average", "support"] == 6
    assert metrics.per_class_report([], [], ["a", "b"]).empty


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_report_equals_scikit_learns(seed):
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 3], size=500)  # class 2 is never held
    preds = np.where((rng.random(500) < 0.7) & (labels != 3), labels, rng.choice([0, 1, 2], size=500))  # never 3
    names = ["a", "b", "c", "d"]
    report = metrics.per_class_report(labels, preds, names).iloc[:4]
    expected = precision_recall_fscore_support(labels, preds, labels=[0, 1, 2, 3], average=None,
                                               zero_division=np.nan)
    for column, values in zip(["precision", "recall", "f1", "support"], expected):
        np.testing.assert_allclose(report[column].to_numpy(dtype=float), values, equal_nan=True)
    assert np.isnan(report["recall"].iloc[2]) and np.isnan(report["precision"].iloc[3])


def test_binary_curves_by_hand():
    y = [False, False, True, True]
    s = [0.1, 0.4, 0.35, 0.8]
    curves = metrics.binary_curves(y, s)
    # thresholds descending: 0.8 -> (0, .5), 0.4 -> (.5, .5), 0.35 -> (.5, 1), 0.1 -> (1, 1)
    np.testing.assert_allclose(curves.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curves.tpr, [0, 0.5, 0.5, 1, 1])
    assert curves.roc_auc == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ranked right
    # average precision: recall steps of .5 at precision 1 (0.8) and 2/3 (0.35)
    assert curves.average_precision == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert (curves.positives, curves.negatives) == (2, 2)
    assert metrics.binary_curves([True, True], [0.2, 0.9]) is None  # one class only: undefined


@pytest.mark.parametrize("n,distinct", [(50, 7), (3000, 40), (3000, 3000)])
def test_binary_curves_equal_scikit_learns_curve_functions(n, distinct):
    from sklearn.metrics import (average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score,
                                 roc_curve)

    rng = np.random.default_rng(n + distinct)
    y = rng.random(n) < 0.3
    s = np.round(np.clip(rng.normal(0.4 + 0.3 * y, 0.2), 0, 1) * (distinct - 1)) / (distinct - 1)  # many ties
    curves = metrics.binary_curves(y, s)
    fpr, tpr, roc_thresholds = roc_curve(y, s, drop_intermediate=False)
    precision, recall, pr_thresholds = precision_recall_curve(y, s)
    for got, expected in [(curves.fpr, fpr), (curves.tpr, tpr), (curves.roc_thresholds, roc_thresholds),
                          (curves.precision, precision), (curves.recall, recall),
                          (curves.pr_thresholds, pr_thresholds)]:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert curves.roc_auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert curves.average_precision == pytest.approx(average_precision_score(y, s), abs=1e-12)
    for threshold in (0.0, 0.25, 0.5, float(s[0]), 1.0):
        at = metrics.threshold_metrics(y, s, threshold)
        tn, fp, fn, tp = confusion_matrix(y, s >= threshold, labels=[False, True]).ravel()
        assert (at["tp"], at["fp"], at["fn"], at["tn"]) == (tp, fp, fn, tn)


def test_threshold_metrics_by_hand():
    y = [False, False, True, True, True]
    s = [0.1, 0.6, 0.35, 0.8, 0.9]
    at = metrics.threshold_metrics(y, s, 0.5)  # predicted positive: .6, .8, .9
    assert (at["tp"], at["fp"], at["fn"], at["tn"]) == (2, 1, 1, 1)
    assert at["precision"] == pytest.approx(2 / 3) and at["recall"] == pytest.approx(2 / 3)
    assert at["f1"] == pytest.approx(2 / 3) and at["fpr"] == pytest.approx(0.5) and at["accuracy"] == 0.6
    at = metrics.threshold_metrics(y, s, 0.95)  # nothing predicted positive
    assert at["tp"] == at["fp"] == 0 and np.isnan(at["precision"]) and at["recall"] == 0 and np.isnan(at["f1"])
    at = metrics.threshold_metrics(y, s, 0.0)  # everything positive
    assert at["recall"] == 1.0 and at["fpr"] == 1.0 and at["precision"] == pytest.approx(0.6)


def test_curve_figures_mark_the_threshold():
    curves = metrics.binary_curves([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    roc = plots.roc_figure(curves.fpr, curves.tpr, curves.roc_thresholds, curves.roc_auc, (0.5, 0.5))
    assert "0.750" in roc.layout.title.text and list(roc.data[-1].x) == [0.5]
    pr = plots.precision_recall_figure(curves.precision, curves.recall, curves.pr_thresholds,
                                       curves.average_precision, (0.5, 1.0))
    assert len(pr.data[0].customdata) == len(curves.precision)
    nan_point = plots.roc_figure(curves.fpr, curves.tpr, curves.roc_thresholds, curves.roc_auc, (np.nan, 0.5))
    assert len(nan_point.data) == 2  # diagonal and curve, no marker at an undefined point


def test_cluster_summary_has_the_models_recall_per_class():
    clusters = np.array([1, 1, 1, 0, 0, 2])
    rows = pd.DataFrame({"label": [0, 0, 1, 1, 1, 0], "pred": [0, 1, 1, 1, 1, 1]},
                        index=[10, 11, 12, 13, 14, 15]).assign(correct=lambda d: d["label"] == d["pred"])
    R = sp.csr_matrix(np.eye(6, 3, dtype=np.float32))
    summary = cluster_summary(clusters, rows, R, ["x", "y", "z"], np.zeros(3, dtype=bool), ["neg", "pos"])
    summary = summary.set_index("cluster")
    # cluster 1: neg rows 10, 11 (1 predicted neg), pos row 12 (predicted pos)
    np.testing.assert_allclose(summary.loc[1, "class_recall"], [0.5, 1.0])
    assert summary.loc[1, "class_recall_text"] == "neg 50% · pos 100%"
    np.testing.assert_allclose(summary.loc[0, "class_recall"], [np.nan, 1.0])
    assert summary.loc[0, "class_recall_text"] == "pos 100%"
    np.testing.assert_allclose(summary.loc[2, "class_recall"], [0.0, np.nan])
    # the share of each class's slice examples (the older "recall" column) is unchanged
    np.testing.assert_allclose(summary.loc[1, "recall"], [2 / 3, 1 / 3])
