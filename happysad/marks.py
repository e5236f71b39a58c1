"""The two marks a prediction can carry beside its label: unsure, and fits no class.

A classifier trained on a few hundred photos will be shown anything. Its label is always given, so nothing is
hidden, but two facts come with it, each with its reason:

    unsure         the calibrated probability lies within a band around the decision threshold (for more
                   classes: the two highest probabilities lie within the band of each other). Calibrated
                   probabilities (happysad.calibration) make the band mean what it says: on unseen web photos
                   54-57 % of those inside a band of 0.2 around 0.5 were right, 84-85 % of the others.
    fits no class  the picture's features (`Domain.reads`: what the output layer reads, or the CNN's blocks'
                   statistics) are far from every class seen in training: the cosine distance to the nearest
                   of the classes' centres (k-means, about one centre per PHOTOS_PER_CENTRE photos, at most
                   CENTRES_PER_CLASS per class, so a class of several kinds of picture keeps them all) is
                   beyond the domain's limit. The limit comes from
                   photos the centres never saw (out of fold, or the validation partition): all but FAR_SHARE
                   of them are closer, and it is at least FAR_RATIO times their median, for folders where
                   nearly all pictures are alike. Where the expression network sits beside an ImageNet
                   backbone, only the ImageNet features count (`columns`; features.domain_columns): the face
                   network maps text, noise and flat colours as close to the photos as the photos are to each
                   other (README, "The expression network reads the face").

train stores the centres and the limit with the model (the record's `domain`); predict, serve and the JSON API
mark each image by them, and review lists its suspects by the same rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from happysad.crossval import unit
from happysad.runtime import deferred

cluster = deferred("sklearn.cluster", after_tensorflow=False)

UNSURE_BAND = 0.2  # README: on unseen web photos, 15 % of them fall inside; 57 % of those were right, 85 % outside
FAR_SHARE = 0.04  # README: 3-4 % of unseen web photos are marked, and 90-93 % of pictures unlike any photo
FAR_RATIO = 1.5
CENTRES_PER_CLASS = 16
PHOTOS_PER_CENTRE = 8
# k-means starts: 3 marked 90.9 % of unlike pictures where 1 marked 89.1 %, at the same 3.3-3.4 % of unseen
# photos (12 outer splits of 448 web photos), for 0.4 s more a run (README)
KMEANS_STARTS = 3
# Where only a face network's features are there to measure (README, "The expression network reads the face").
FACE_FEATURES_CAVEAT = ("\"fits no class\" measures the expression network's features here, and they put text, "
                        "noise and flat colours among the photos; beside MobileNet (--arch "
                        "mobilenet+expression) the mark measures the picture")


def class_centres(vectors, labels, num_classes: int) -> np.ndarray:
    """(centres, dim) unit-length k-means centres of each class's unit-length vectors, all classes together."""
    vectors, labels = unit(vectors), np.asarray(labels, int)
    found = []
    for c in range(num_classes):
        members = vectors[labels == c]
        count = int(np.clip(len(members) // PHOTOS_PER_CENTRE, 1, CENTRES_PER_CLASS))
        found.append(cluster.KMeans(count, n_init=KMEANS_STARTS, random_state=0).fit(members).cluster_centers_)
    return unit(np.concatenate(found))


def picked(vectors, columns: tuple = ()) -> np.ndarray:
    """The columns ((start, stop), ...) of feature vectors that a Domain measures; () all of them."""
    vectors = np.asarray(vectors)
    return np.concatenate([vectors[:, start:stop] for start, stop in columns], axis=1) if columns else vectors


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


def out_of_fold_domain(vectors, labels, folds, num_classes: int, far_share: float = FAR_SHARE,
                       columns: tuple = ()) -> "Domain":
    """The domain of the cross-validated head: centres of every photo's `columns` (marks.picked), the limit
    from each photo's distance to the centres of the other folds."""
    seen = picked(vectors, columns)
    return Domain(class_centres(seen, labels, num_classes),
                  far_limit(out_of_fold_distances(seen, labels, folds, num_classes), far_share), columns)


# Which features of a network "fits no class" measures (Domain.reads; model.domain_reader): what its output layer
# reads (a backbone's features), or for the CNN the mean and the maximum of each convolution block's maps over
# the picture, each block's unit length. On web photos the CNN's 256 features before its output layer marked
# 10 % of pictures unlike any photo, its blocks' statistics 60 %, at 4 % of unseen photos (README, "The CNN
# measures itself on every photo").
OUTPUT_LAYER_INPUT = "output layer input"
BLOCK_STATISTICS = "block statistics"


@dataclass(frozen=True)
class Domain:
    """What the training photos look like to the model: the classes' centres, and how far an unseen one may be."""

    centres: np.ndarray  # (centres, dim), unit length
    limit: float  # a cosine distance: further than this from every centre fits no class
    columns: tuple = ()  # ((start, stop), ...) of the features read that the distance measures; () all
    reads: str = OUTPUT_LAYER_INPUT  # which features of the network (models.domain_reader)

    def far(self, vectors) -> tuple:
        """(distances, whether each is beyond the limit) of feature vectors (what `reads` names)."""
        found = distances(picked(vectors, self.columns), self.centres)
        return found, found > self.limit

    def to_record(self) -> dict:
        return {"centres": np.round(self.centres, 5).tolist(), "limit": self.limit,
                **({"columns": [list(span) for span in self.columns]} if self.columns else {}),
                **({"reads": self.reads} if self.reads != OUTPUT_LAYER_INPUT else {})}

    @classmethod
    def from_record(cls, values: dict):
        """The record's domain, or None for a model trained before it was stored."""
        if not values:
            return None
        return cls(np.asarray(values["centres"], np.float64), float(values["limit"]),
                   tuple(tuple(span) for span in values.get("columns", ())),
                   values.get("reads", OUTPUT_LAYER_INPUT))


def far_limit(held_out_distances, far_share: float = FAR_SHARE) -> float:
    """The distance all but far_share of the held-out photos are within, and at least FAR_RATIO times their
    median."""
    held_out_distances = np.asarray(held_out_distances, np.float64)
    return float(max(np.quantile(held_out_distances, 1 - far_share), FAR_RATIO * np.median(held_out_distances)))


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
