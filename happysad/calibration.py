"""Probabilities that mean what they say, and the decision where the classes' probabilities meet.

A head fitted on a few hundred photos is over- or under-confident. So its logits are scaled once more, by a
scaling fitted on predictions for photos the model never saw (the out-of-fold predictions of the
cross-validation, or the validation partition of a fit on images): Platt scaling (a scale and a shift of the
logit) for two classes, temperature scaling (a scale of every logit) for more. Both are affine in the logits,
so `apply_to_network` writes them into the network's output layer: the saved model's probability is the
calibrated one in every stage and every export, with nothing added to the network.

The label is then the class of highest calibrated probability (0.5 for two classes): the shown probability
and the label always agree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from happysad.runtime import deferred

linear_model = deferred("sklearn.linear_model", after_tensorflow=False)
optimize = deferred("scipy.optimize", after_tensorflow=False)

BINS = 10  # of the reliability diagram and the expected calibration error, equally wide in confidence
DRAWN_AT_ONCE = 2_000_000  # outcomes chance_calibration_error holds at once


@dataclass(frozen=True)
class Scaling:
    """logit -> scale * logit + shift (the shift for two classes only; more classes share one temperature,
    1 / scale, so their ranking never changes)."""

    scale: float = 1.0
    shift: float = 0.0

    def to_record(self) -> dict:
        return asdict(self)


IDENTITY = Scaling()


def describe(scaling: Scaling, num_classes: int) -> str:
    """The calibration in words, as train prints it and runs compares it."""
    if scaling == IDENTITY:
        return "none (the held-out predictions ranked the classes no better than chance)"
    if num_classes == 2:
        return f"logit x {scaling.scale:.2f} {scaling.shift:+.2f} (Platt scaling: so that p=0.8 means right about 8 times in 10)"
    return f"temperature {1 / scaling.scale:.2f}"


def logits(probabilities) -> np.ndarray:
    """Two classes: (n,) the log-odds of the second class. More: (n, classes) log-probabilities, logits up to
    a constant per row, which softmax ignores."""
    probabilities = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
    if probabilities.shape[1] == 2:
        return np.log(probabilities[:, 1]) - np.log(probabilities[:, 0])
    return np.log(probabilities)


def from_logits(values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        p = 1.0 / (1.0 + np.exp(-values))
        return np.stack([1.0 - p, p], axis=1)
    values = values - values.max(axis=1, keepdims=True)
    exp = np.exp(values)
    return exp / exp.sum(axis=1, keepdims=True)


def apply(scaling: Scaling, probabilities) -> np.ndarray:
    return from_logits(scaling.scale * logits(probabilities) + scaling.shift)


def undo(scaling: Scaling, probabilities) -> np.ndarray:
    """The probabilities before `scaling`: what the head said before it was calibrated."""
    return from_logits((logits(probabilities) - scaling.shift) / scaling.scale)


def fit(probabilities, labels) -> Scaling:
    """The scaling of lowest log loss on these (never seen) predictions and their true labels."""
    labels = np.asarray(labels, int)
    z = logits(probabilities)
    if len(np.unique(labels)) < 2:
        return IDENTITY
    if z.ndim == 1:
        # A logistic regression on the one logit, all but unpenalised: Platt's method.
        platt = linear_model.LogisticRegression(C=1e4, max_iter=1000).fit(z[:, None], labels)
        if platt.coef_[0, 0] <= 0:
            # Held-out logits that rank the classes no better than chance (few of them, or a model that knows
            # nothing): no calibration can be learnt from them, and turning the model's answers around, or
            # flattening them, on such evidence would be worse than leaving them as they are.
            return IDENTITY
        return Scaling(float(platt.coef_[0, 0]), float(platt.intercept_[0]))

    def loss(log_scale):
        scaled = from_logits(np.exp(log_scale) * z)
        return -np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-12, 1.0)))

    best = optimize.minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded")
    return Scaling(float(np.exp(best.x)))


def apply_to_network(network, scaling: Scaling, layer_name: str = "prediction") -> None:
    """Scale the logits of the network's output layer (Dense, sigmoid or softmax) in place."""
    layer = network.get_layer(layer_name)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * scaling.scale, bias * scaling.scale + scaling.shift])


def reliability(labels, probabilities, bins: int = BINS) -> list:
    """Per confidence bin (the highest probability, in equal-width bins from 0 to 1, as the expected
    calibration error is usually computed; below 1/classes they stay empty): the bin's range, how many
    predictions fell in it, their mean confidence and the share that were right."""
    labels = np.asarray(labels, int)
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(inside.sum()),
                     "confidence": float(confidence[inside].mean()) if inside.any() else None,
                     "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return rows


def expected_calibration_error(labels, probabilities, bins: int = BINS) -> float:
    """The mean gap between confidence and accuracy over the bins of `reliability`, weighted by their counts."""
    rows = reliability(labels, probabilities, bins)
    total = sum(row["count"] for row in rows)
    return float(sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in rows if row["count"])
                 / max(total, 1))


def chance_calibration_error(probabilities, bins: int = BINS, draws: int = 2000, seed: int = 0) -> float:
    """The expected calibration error that perfectly calibrated probabilities would still show on this many
    images: the mean over `draws` sets of outcomes drawn from the probabilities themselves (each prediction
    right with its confidence). A measured error near it says no more than "calibrated, as far as this many
    images can tell"; a few hundred images cannot tell 0.03 from 0."""
    confidence = np.asarray(probabilities, np.float64).max(axis=1)
    which = np.clip(np.searchsorted(np.linspace(0.0, 1.0, bins + 1), confidence, side="right") - 1, 0, bins - 1)
    in_bin = np.eye(bins)[which]  # (images, bins)
    rng, total = np.random.default_rng(seed), 0.0
    # A few million outcomes at a time, so that evaluating a large folder stays within a few tens of MB; the
    # generator yields the same numbers in pieces as at once.
    step = max(1, DRAWN_AT_ONCE // max(len(confidence), 1))
    for start in range(0, draws, step):
        right = rng.random((min(step, draws - start), len(confidence))) < confidence
        gaps = (right - confidence) @ in_bin  # (draws, bins): per bin, the sum of (right - confidence)
        total += float(np.abs(gaps).sum())
    return total / draws / max(len(confidence), 1)


def errors(labels, probabilities, uncalibrated=None) -> dict:
    """What every stage reports of its probabilities' calibration: the expected calibration error, before
    calibration where known, and what perfectly calibrated probabilities would show on this many images."""
    return {"calibration_error": expected_calibration_error(labels, probabilities),
            "calibration_error_before": None if uncalibrated is None else
            expected_calibration_error(labels, uncalibrated),
            "calibration_error_chance": chance_calibration_error(probabilities)}


def errors_text(summary: dict) -> str:
    """errors() as train and evaluate print it."""
    before = summary.get("calibration_error_before")
    chance = summary.get("calibration_error_chance")
    return (f"calibration error (ECE) {summary['calibration_error']:.3f}"
            + ("" if before is None else f" (uncalibrated {before:.3f})")
            + ("" if chance is None else f"; perfectly calibrated probabilities would show about {chance:.3f} "
                                         f"on {summary['count']} images"))
