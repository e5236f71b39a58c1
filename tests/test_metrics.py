"""metrics: the accuracy interval train prints, and the summary and threshold sweep checked against
scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score, log_loss,
                             precision_recall_fscore_support, roc_auc_score)

from happysad import metrics


def test_wilson_interval_matches_known_values_and_stays_in_range():
    assert metrics.wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert metrics.wilson_interval(4, 5) == pytest.approx((0.3755, 0.9638), abs=1e-4)
    low, high = metrics.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert metrics.wilson_interval(10, 10)[1] == 1.0
    narrow, wide = metrics.wilson_interval(800, 1000), metrics.wilson_interval(40, 50)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more test images, a tighter interval


def predictions(seed=0, n=200, classes=2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_summary_agrees_with_scikit_learn(classes):
    labels, probabilities = predictions(classes=classes)
    threshold = 0.4 if classes == 2 else 0.5
    summary = metrics.summarize(labels, probabilities, [f"c{i}" for i in range(classes)], threshold)
    predicted = metrics.predicted_labels(probabilities, threshold)
    assert classes == 3 or not np.array_equal(predicted, probabilities.argmax(axis=1))  # the threshold counts
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, zero_division=0)
    assert summary["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert summary["f1"] == pytest.approx(f1.mean()) and summary["recall"] == pytest.approx(recall.mean())
    for i in range(classes):
        assert summary["per_class"][f"c{i}"]["precision"] == pytest.approx(precision[i])
        assert summary["per_class"][f"c{i}"]["support"] == support[i]
    assert summary["log_loss"] == pytest.approx(log_loss(labels, probabilities), abs=1e-6)
    if classes == 2:
        assert summary["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]))


def test_the_threshold_sweep_agrees_with_scikit_learn():
    labels, probabilities = predictions(seed=1)
    for row in metrics.threshold_sweep(labels, probabilities[:, 1], thresholds=[0.2, 0.5, 0.7]):
        predicted = (probabilities[:, 1] >= row["threshold"]).astype(int)
        assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
        assert row["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
        assert row["f1"] == pytest.approx(f1_score(labels, predicted))
