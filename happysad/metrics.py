"""Classification metrics from labels and predicted probabilities, for two classes or many.

Computed with numpy from the predictions themselves, so training, evaluate and the reports agree exactly.
"""
import numpy as np


def predicted_labels(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Row-wise label: the threshold on the second column for two classes, the arg-max otherwise."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(int)
    return probabilities.argmax(axis=1)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def _safe_divide(numerator, denominator):
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def summarize(y_true, probabilities, class_names, threshold: float = 0.5) -> dict:
    """Accuracy, per-class and macro precision / recall / F1, confusion matrix and log loss."""
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    num_classes = len(class_names)
    y_pred = predicted_labels(probabilities, threshold)
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    true_positives = np.diag(matrix)
    precision = _safe_divide(true_positives, matrix.sum(axis=0))
    recall = _safe_divide(true_positives, matrix.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    eps = 1e-7
    picked = np.clip(probabilities[np.arange(len(y_true)), y_true], eps, 1.0) if len(y_true) else []
    return {
        "count": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "log_loss": float(-np.mean(np.log(picked))) if len(y_true) else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(matrix[i].sum())}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }
