"""Classification metrics from labels and predicted probabilities, for two classes or many.

Computed from the predictions themselves, so training, evaluate and the reports agree exactly: the curves, the
areas and the confusion matrix by scikit-learn; what it has no function for (the threshold sweep, the Wilson
interval, the summary train and evaluate print) here.
"""
import numpy as np

from happysad.runtime import deferred

sklearn_metrics = deferred("sklearn.metrics", after_tensorflow=False)


def predicted_labels(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Row-wise label: the threshold on the second column for two classes, the arg-max otherwise."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(int)
    return probabilities.argmax(axis=1)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return sklearn_metrics.confusion_matrix(y_true, y_pred, labels=range(num_classes))


def _safe_divide(numerator, denominator):
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def class_probabilities(outputs) -> np.ndarray:
    """A model's outputs as one column per class: a single sigmoid column p becomes [1 - p, p]."""
    outputs = np.asarray(outputs, dtype=float)
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        p = outputs.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return outputs


def normalize_rows(matrix) -> np.ndarray:
    """Each row of a confusion matrix divided by its total: the share of each true class per prediction."""
    matrix = np.asarray(matrix, dtype=float)
    return _safe_divide(matrix, np.broadcast_to(matrix.sum(axis=1, keepdims=True), matrix.shape))


def roc_curve(y_true, scores) -> tuple:
    """(false positive rate, true positive rate, thresholds) for 'positive when score >= threshold', every
    distinct score a threshold; starts at (0, 0) with an infinite threshold. y_true: 1 for the positive class."""
    return sklearn_metrics.roc_curve(y_true, scores, drop_intermediate=False)


def roc_auc(y_true, scores):
    """Area under the ROC curve, or None when only one class is present (the area is undefined)."""
    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0 or y_true.min() == y_true.max():
        return None
    return float(sklearn_metrics.roc_auc_score(y_true, scores))


def pr_curve(y_true, scores) -> tuple:
    """(precision, recall, thresholds) of the positive class, scikit-learn's: recall from 1 down to 0, where
    precision is 1 (nothing predicted positive)."""
    return sklearn_metrics.precision_recall_curve(y_true, scores)


def average_precision(y_true, scores):
    """Area under the precision-recall curve as average precision: sum over thresholds of
    (recall gained) x (precision there). None when there are no positives."""
    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0 or y_true.max() == 0:
        return None
    return float(sklearn_metrics.average_precision_score(y_true, scores))


def threshold_sweep(y_true, scores, thresholds=None) -> list:
    """Accuracy, the positive class's precision / recall / F1, the macro F1 and the balanced accuracy (the
    mean of the two classes' recalls) at each threshold.

    Default thresholds: 0.01, 0.02, ..., 0.99.
    """
    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if thresholds is None:
        thresholds = np.round(np.linspace(0.01, 0.99, 99), 2)
    # Every threshold at once: (thresholds, images) predictions, counted per class.
    predicted = scores[None, :] >= np.asarray(thresholds, dtype=float)[:, None]
    positives = y_true == 1
    tp = (predicted & positives).sum(axis=1)
    fp = (predicted & ~positives).sum(axis=1)
    fn = positives.sum() - tp
    tn = (~positives).sum() - fp
    recall = _safe_divide(np.stack([tn, tp], axis=1), np.stack([tn + fp, tp + fn], axis=1))
    precision = _safe_divide(np.stack([tn, tp], axis=1), np.stack([tn + fn, tp + fp], axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    rows = []
    for i, threshold in enumerate(thresholds):
        rows.append({"threshold": float(threshold), "accuracy": float((tp[i] + tn[i]) / max(1, len(y_true))),
                     "precision": float(precision[i, 1]), "recall": float(recall[i, 1]), "f1": float(f1[i, 1]),
                     "macro_f1": float(f1[i].mean()), "balanced_accuracy": float(recall[i].mean())})
    return rows


def image_losses(y_true, probabilities) -> np.ndarray:
    """Each image's cross-entropy: minus the log of the probability given to its own label (clipped at 1e-7,
    as Keras clips). Cross-validation chooses by its mean, evaluate ranks mistakes by it."""
    y_true = np.asarray(y_true, dtype=int)
    picked = np.asarray(probabilities, dtype=float)[np.arange(len(y_true)), y_true]
    return -np.log(np.clip(picked, 1e-7, 1.0))


def log_loss(y_true, probabilities) -> float:
    """The mean of image_losses (0 for no images)."""
    return float(np.mean(image_losses(y_true, probabilities))) if len(y_true) else 0.0


def wilson_interval(successes: int, count: int, z: float = 1.96) -> tuple:
    """The Wilson score interval (95 % by default) of a proportion: how far the accuracy measured on `count`
    test images may be from the accuracy on all pictures like them. Stays inside [0, 1] even at 0 or 1."""
    if count == 0:
        return (0.0, 1.0)
    p = successes / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * np.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def summarize(y_true, probabilities, class_names, threshold: float = 0.5, predicted=None) -> dict:
    """Accuracy, per-class and macro precision / recall / F1, per-class accuracy, confusion matrix (counts
    and normalised by true class) and log loss; for two classes also ROC-AUC and PR-AUC (average precision)
    of the second class, whose probability the model's sigmoid outputs.

    Per-class accuracy is the share of that class's images labelled correctly (equal to its recall);
    accuracy_interval is its 95 % Wilson interval. predicted: the labels, where they were not all made with
    one threshold (cross-validation: each fold its own).
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    num_classes = len(class_names)
    y_pred = predicted_labels(probabilities, threshold) if predicted is None else np.asarray(predicted, int)
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    true_positives = np.diag(matrix)
    precision = _safe_divide(true_positives, matrix.sum(axis=0))
    recall = _safe_divide(true_positives, matrix.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    summary = {
        "count": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "accuracy_interval": wilson_interval(int((y_pred == y_true).sum()), len(y_true)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "log_loss": log_loss(y_true, probabilities),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "accuracy": float(recall[i]), "support": int(matrix[i].sum())}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_normalized": normalize_rows(matrix).tolist(),
    }
    if num_classes == 2:
        summary["threshold"] = float(threshold)
        summary["roc_auc"] = roc_auc(y_true, probabilities[:, 1])
        summary["pr_auc"] = average_precision(y_true, probabilities[:, 1])
    return summary
