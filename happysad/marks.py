"""The two marks a prediction can carry beside its label: unsure, and fits no class.

A classifier trained on a few hundred photos will be shown anything. Its label is always given, so nothing is
hidden, but two facts come with it, each with its reason:

    unsure         the calibrated probability lies within a band around the decision threshold (for more
                   classes: the two highest probabilities lie within the band of each other). Calibrated
                   probabilities (happysad.calibration) make the band mean what it says: about 60 % right
                   for a band of 0.2 around 0.5.
    fits no class  the picture's features (what the output layer reads) are far from every class seen in
                   training: the cosine distance to the nearest class centre is beyond the domain's limit.
                   The limit comes from the distances of photos the centres never saw (out of fold, or the
                   validation partition): their median plus FAR_Z robust standard deviations (1.4826 times
                   the median absolute deviation, which the far pictures cannot inflate), and at least
                   FAR_RATIO times the median, for folders where nearly all pictures are alike.

train stores the class centres and the limit with the model (the record's `domain`); predict, serve and the
JSON API mark each image by them, and review lists its suspects by the same rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNSURE_BAND = 0.2  # README: on unseen web photos, 15 % of them fall inside; 57 % of those were right, 85 % outside
FAR_Z = 3.0  # README: on unseen web photos 3-5 % are marked, and 83 % of pictures unlike any photo
FAR_RATIO = 1.5


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def class_centres(vectors, labels, num_classes: int) -> np.ndarray:
    """(classes, dim) unit-length mean of each class's unit-length vectors."""
    vectors, labels = unit(vectors), np.asarray(labels, int)
    return unit(np.stack([vectors[labels == c].mean(axis=0) for c in range(num_classes)]))


def distances(vectors, centres) -> np.ndarray:
    """Cosine distance of each vector to its nearest class centre."""
    return 1.0 - (unit(vectors) @ np.asarray(centres, np.float64).T).max(axis=1)


def out_of_fold_distances(vectors, labels, folds, num_classes: int) -> np.ndarray:
    """Each vector's distance to the class centres of the other folds: as far as an unseen photo would be."""
    vectors, labels, folds = np.asarray(vectors), np.asarray(labels, int), np.asarray(folds, int)
    result = np.zeros(len(labels))
    for fold in np.unique(folds):
        held = folds == fold
        result[held] = distances(vectors[held], class_centres(vectors[~held], labels[~held], num_classes))
    return result


def robust_z(values, median: float, spread: float) -> np.ndarray:
    return (np.asarray(values) - median) / max(spread, 1e-12)


@dataclass(frozen=True)
class Domain:
    """What the training photos look like to the model: class centres, and how far an unseen one may be."""

    centres: np.ndarray  # (classes, dim), unit length
    median: float  # of the held-out distances
    spread: float  # 1.4826 * their median absolute deviation
    far_z: float = FAR_Z

    @property
    def limit(self) -> float:
        return max(self.median + self.far_z * self.spread, FAR_RATIO * self.median)

    def far(self, vectors) -> tuple:
        """(distances, whether each is beyond the limit) of feature vectors."""
        found = distances(vectors, self.centres)
        return found, found > self.limit

    def to_record(self) -> dict:
        return {"centres": np.round(self.centres, 6).tolist(), "median": self.median, "spread": self.spread,
                "far_z": self.far_z, "limit": self.limit}

    @classmethod
    def from_record(cls, values: dict):
        """The record's domain, or None for a model trained before it was stored."""
        if not values:
            return None
        return cls(np.asarray(values["centres"], np.float64), values["median"], values["spread"], values["far_z"])


def fit_domain(centres, held_out_distances, far_z: float = FAR_Z) -> Domain:
    held_out_distances = np.asarray(held_out_distances, np.float64)
    median = float(np.median(held_out_distances))
    spread = float(1.4826 * np.median(np.abs(held_out_distances - median)))
    return Domain(np.asarray(centres, np.float64), median, spread, far_z)


def unsure(probabilities, threshold: float = 0.5, band: float = UNSURE_BAND) -> np.ndarray:
    """Rows whose decision is within the band: two classes, |p - threshold| < band / 2; more, the two highest
    probabilities less than `band` apart."""
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.shape[1] == 2:
        return np.abs(probabilities[:, 1] - threshold) < band / 2
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0] < band


def unsure_reason(probabilities, class_names, threshold: float = 0.5) -> str:
    order = np.argsort(probabilities)[::-1]
    if len(class_names) == 2 and threshold != 0.5:
        return f"p({class_names[1]}) {probabilities[1]:.2f} is near the threshold {threshold:.2f}"
    return (f"{class_names[order[0]]} {probabilities[order[0]]:.2f} against {class_names[order[1]]} "
            f"{probabilities[order[1]]:.2f}")


def far_reason(distance: float, domain: Domain) -> str:
    return (f"unlike the training photos (distance {distance:.2f} to the nearest class, limit "
            f"{domain.limit:.2f})")
