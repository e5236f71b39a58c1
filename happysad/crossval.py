"""Cross-validation: every photo scored by a model that never saw it nor its near copies, then a model on all.

A few hundred photos are too few to spend a third of them on validation and test. So the head trains on
L2-normalised backbone features with scikit-learn's logistic regression (an L2 penalty, balanced class weights)
and is measured by K-fold cross-validation whose folds keep near copies together (`data.make_folds`). Every
choice made from the data (the feature set when several backbones compete, the penalty, the decision threshold)
is made inside the loop, by an inner cross-validation over the other K-1 folds: nested cross-validation, so
the printed figure pays for the choices. The same choices, made once more on every photo, train the head that
is saved.

Nested cross-validation costs K outer times K-1 inner fits per setting when done naively. Here the inner folds
of outer fold k are the other outer folds, so an inner fit leaves out two folds {j, k}, and the fit that leaves
out {j, k} serves both outer fold k and outer fold j: K + K(K-1)/2 fits per setting (15 for K = 5) give the
outer measurement and the final choice, instead of K(K-1) + K = 25.

A fit on images (the CNN) costs minutes, not milliseconds: K fits, one per fold, each scored on its fold after
every epoch (`epochs_cross_validated`). Its choices (how many epochs, the calibration) are made for each fold
from the other folds' scores, and once more from all of them for the network trained on every photo.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from happysad import calibration, metrics
from happysad.runtime import deferred

linear_model = deferred("sklearn.linear_model", after_tensorflow=False)
threadpoolctl = deferred("threadpoolctl", after_tensorflow=False)

# The logistic regression's C (inverse L2 penalty) on unit-length features: chosen at 3-10 on web photos and
# at 30 on generated faces (README), so the grid reaches past both.
PENALTIES = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass(frozen=True)
class Choice:
    """What the data chose: the feature set (a backbone, or several joined with '+'; the CNN: "cnn"), the
    penalty C (a head) or the epoch count (a fit on images), the calibration of the logits, and the threshold on
    the second class's calibrated probability (two classes; 0.5, where the classes' probabilities meet, unless
    one was given)."""

    features: str
    penalty: float | None
    threshold: float
    scaling: calibration.Scaling = calibration.IDENTITY
    epochs: int | None = None


@dataclass
class Measurement:
    """Out-of-fold results: each image's probabilities and label come from the outer fold that held it out,
    with the choices that fold's inner cross-validation made."""

    probabilities: np.ndarray  # (images, classes), calibrated inside each outer fold
    uncalibrated: np.ndarray  # (images, classes), the same heads before calibration
    predicted: np.ndarray  # (images,) labels, each with its own fold's threshold
    folds: np.ndarray  # (images,) the outer fold of each image
    fold_choices: list  # Choice per outer fold
    final: Choice  # made on every image: the saved head's
    scores: dict  # {(features, penalty or epochs): cross-validated log loss on every image}: what chose `final`

    def summary(self, labels, class_names) -> dict:
        """metrics.summarize of the out-of-fold predictions, with how they were made."""
        summary = metrics.summarize(labels, self.probabilities, class_names, self.final.threshold,
                                    predicted=self.predicted)
        return {**summary, "folds": int(self.folds.max()) + 1,
                **calibration.errors(labels, self.probabilities, self.uncalibrated),
                "fold_choices": [asdict(choice) for choice in self.fold_choices],
                "choice": asdict(self.final),
                "candidates": [{"features": name, "epochs" if self.final.epochs else "penalty": setting,
                                "log_loss": loss} for (name, setting), loss in self.scores.items()]}


def unit(vectors) -> np.ndarray:
    """Each row scaled to length 1, as keras.layers.UnitNormalization does inside the saved network."""
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def joined(per_backbone: dict, names) -> np.ndarray:
    """The feature set of several backbones: each one's pooled features made unit length, side by side."""
    return np.concatenate([unit(per_backbone[name]) for name in names], axis=-1)


def fit_head(vectors, labels, penalty: float):
    """A logistic regression (softmax for more than two classes) with balanced class weights."""
    return linear_model.LogisticRegression(C=penalty, class_weight="balanced", max_iter=2000).fit(vectors, labels)


def decision_threshold(setting, num_classes: int) -> float:
    """--threshold: the number given (two classes), or auto: 0.5 on calibrated probabilities, where the label
    is the class the probability favours."""
    return float(setting) if setting != "auto" and num_classes == 2 else 0.5


def in_row_space(vectors) -> np.ndarray:
    """The same images in at most as many dimensions as there are images, with the same dot products: their
    coordinates in the span of the rows, from the eigenvectors of the Gram matrix. Every head fitted on some
    of these rows has its weights in that span (an L2 penalty sets the rest to 0), so it fits the same
    probabilities here as on the original features, only faster when backbones give more numbers per image
    than there are images (1,024-2,432 against a few hundred)."""
    vectors = np.asarray(vectors, np.float64)
    if vectors.shape[1] <= vectors.shape[0]:
        return vectors
    eigenvalues, eigenvectors = np.linalg.eigh(vectors @ vectors.T)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def held_out_predictions(feature_sets: dict, labels, folds, penalties) -> dict:
    """{(features, penalty, left-out folds): probabilities of the left-out images (other rows NaN)} for every
    single fold and every pair of folds left out, fitted on two cores."""
    n_folds = int(folds.max()) + 1
    left_out = [frozenset([k]) for k in range(n_folds)] + [frozenset(pair) for pair in
                                                          itertools.combinations(range(n_folds), 2)]
    n_classes = int(labels.max()) + 1
    compact = {name: in_row_space(vectors) for name, vectors in feature_sets.items()}

    def fit(job):
        name, penalty, out = job
        held = np.isin(folds, list(out))
        probabilities = np.full((len(labels), n_classes), np.nan)
        head = fit_head(compact[name][~held], labels[~held], penalty)
        probabilities[held] = head.predict_proba(compact[name][held])
        return job, probabilities

    # One BLAS thread per fit, two fits at once: small fits run many times faster than one fit on two
    # threads, which spend their time waiting for each other.
    with threadpoolctl.threadpool_limits(1), ThreadPoolExecutor(2) as pool:
        return dict(pool.map(fit, itertools.product(feature_sets, penalties, left_out)))


def cross_validate(feature_sets: dict, labels, folds, penalties=PENALTIES, threshold="auto") -> Measurement:
    """Nested cross-validation of the head over the candidate feature sets ({name: (images, dim) unit-length
    features}) and penalties, and the final choice on every image (see the module docstring)."""
    labels = np.asarray(labels, int)
    folds = np.asarray(folds, int)
    n_folds, n_classes = int(folds.max()) + 1, int(labels.max()) + 1
    predictions = held_out_predictions(feature_sets, labels, folds, penalties)
    settings = list(itertools.product(feature_sets, penalties))

    def choose(outer):
        """The choice made without outer fold `outer` (None: on every image): the setting of lowest
        cross-validated log loss over the other folds, and the calibration fitted to its out-of-fold
        probabilities there."""
        inner = [k for k in range(n_folds) if k != outer]
        scored = {}
        for setting in settings:
            probabilities = np.zeros((len(labels), n_classes))
            for k in inner:
                out = frozenset([k]) if outer is None else frozenset([k, outer])
                probabilities[folds == k] = predictions[(*setting, out)][folds == k]
            rows = np.isin(folds, inner)
            scored[setting] = (metrics.log_loss(labels[rows], probabilities[rows]), probabilities[rows], labels[rows])
        setting = min(settings, key=lambda s: scored[s][0])
        _, probabilities, seen = scored[setting]
        choice = Choice(setting[0], float(setting[1]), decision_threshold(threshold, n_classes),
                        calibration.fit(probabilities, seen))
        return choice, {s: value[0] for s, value in scored.items()}

    final, scores = choose(None)
    return out_of_fold_measurement(
        choose, lambda choice, k: predictions[(choice.features, choice.penalty, frozenset([k]))][folds == k],
        labels, folds, final, scores)


def epochs_cross_validated(curves: list, labels, folds, features: str = "cnn", threshold="auto") -> Measurement:
    """Cross-validation of a fit on images. curves[k]: (epochs, images of fold k, classes) probabilities that
    fold k's network, trained on the other folds, gave its own fold after each epoch (`after`). The epoch count
    is chosen without the fold it scores: the epoch after which the other folds' pooled log loss was lowest,
    with the calibration fitted to their probabilities then. The final choice, on every fold, is what the
    network trained on every photo uses. `scores` holds that pooled log loss after each epoch ({(features,
    epochs): loss})."""
    labels, folds = np.asarray(labels, int), np.asarray(folds, int)
    n_folds, n_classes = len(curves), int(labels.max()) + 1

    def choose(outer):
        inner = [k for k in range(n_folds) if k != outer]
        rows = np.isin(folds, inner)
        pooled = pooled_losses(curves, labels, folds, inner)
        epoch = int(np.argmin(pooled))
        probabilities = np.zeros((len(labels), n_classes))
        for k in inner:
            probabilities[folds == k] = after(curves[k], epoch)
        scaling = calibration.fit(probabilities[rows], labels[rows])
        choice = Choice(features, None, decision_threshold(threshold, n_classes), scaling, epochs=epoch + 1)
        return choice, {(features, e + 1): float(loss) for e, loss in enumerate(pooled)}

    final, scores = choose(None)
    return out_of_fold_measurement(choose, lambda choice, k: after(curves[k], choice.epochs - 1), labels, folds,
                                   final, scores)


def after(curve, epoch: int) -> np.ndarray:
    """A fold's probabilities after epoch `epoch` (0-based): after its last one for a fold whose fit ended
    sooner (train gives each fold but the first as many epochs as the folds before it found useful)."""
    return np.asarray(curve[min(epoch, len(curve) - 1)], np.float64)


def pooled_losses(curves: list, labels, folds, which) -> np.ndarray:
    """The log loss after each epoch of the folds `which` (indices into curves, whose fold ids they are),
    pooled over their images."""
    labels, folds = np.asarray(labels, int), np.asarray(folds, int)
    longest = max(len(curves[k]) for k in which)
    summed = np.array([[metrics.log_loss(labels[folds == k], after(curves[k], epoch)) * np.sum(folds == k)
                        for epoch in range(longest)] for k in which])
    return summed.sum(axis=0) / np.isin(folds, list(which)).sum()


def out_of_fold_measurement(choose, held_out, labels, folds, final: Choice, scores: dict) -> Measurement:
    """Each outer fold scored with the choice made without it: choose(k) -> (Choice, scores); held_out(choice,
    k) -> fold k's uncalibrated probabilities under that choice."""
    n_folds, n_classes = int(folds.max()) + 1, int(labels.max()) + 1
    out_of_fold = np.zeros((len(labels), n_classes))
    uncalibrated = np.zeros((len(labels), n_classes))
    predicted = np.zeros(len(labels), int)
    fold_choices = []
    for k in range(n_folds):
        choice, _ = choose(k)
        rows = folds == k
        uncalibrated[rows] = held_out(choice, k)
        out_of_fold[rows] = calibration.apply(choice.scaling, uncalibrated[rows])
        predicted[rows] = metrics.predicted_labels(out_of_fold[rows], choice.threshold)
        fold_choices.append(choice)
    return Measurement(out_of_fold, uncalibrated, predicted, folds, fold_choices, final, scores)
