"""Backbone features, computed once per image and stored: the pretrained path trains its head on them.

A frozen ImageNet backbone maps an image to the same vector in every epoch, so running it every epoch (as
`fit` on images does) repeats the expensive part of training for nothing. Here each image goes through the
backbone once, its pooled features are stored, and the head (dropout + one Dense layer) trains on the
stored vectors: an epoch costs milliseconds, and a second run with other head settings (dropout, learning
rate, seed) reads the stored features and skips the backbone entirely.

A stored vector is found by what it depends on: the file's bytes (sha256), the backbone, its weights, the
image size, the preprocessing and the view. Views are fixed augmentations computed once per training image
(`VIEWS`), instead of random ones redrawn every epoch.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from happysad import files
from happysad.runtime import tf

# Stored views per image, by --views. "zoom" is the central 80 % of the picture, resized back up.
VIEWS = {1: ("original",), 2: ("original", "flip"), 4: ("original", "flip", "zoom", "zoom-flip")}
FORMAT = "features-v1"  # changes whenever what a stored vector means changes
MAX_AGE_DAYS = 14  # like the image caches: a store unused this long is removed when another is opened


def transform(batch: tf.Tensor, view: str) -> tf.Tensor:
    """One view of a batch of preprocessed images (float32 in [0, 1])."""
    if view.startswith("zoom"):
        size = batch.shape[1]
        batch = tf.image.resize(tf.image.central_crop(batch, 0.8), (size, size), method="bilinear")
    if view.endswith("flip"):
        batch = tf.image.flip_left_right(batch)
    return batch


def content_hashes(paths) -> list:
    """sha256 of each file's bytes (read on every core): a moved or renamed file keeps its features."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(files.sha256, paths))


def extractor_id(arch: str, weights: str, preprocessing) -> str:
    """What the vectors of one backbone depend on, apart from the image: a weights file counts by its bytes."""
    weights_id = weights
    if weights not in ("imagenet", "none") and Path(weights).is_file():
        weights_id = files.sha256(weights)
    text = f"{FORMAT}|{arch}|{weights_id}|{preprocessing.key}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Store:
    """Feature vectors by (view, content hash): in this process's memory, and on disk when given a folder.

    On disk: FOLDER/features-<extractor id>/<view>/<sha256>.npy, each written atomically (happysad.files), so
    a run killed mid-write leaves no half vector and concurrent runs can share a store.
    """

    def __init__(self, extractor: str, folder=None):
        self.memory = {}
        self.folder = None
        if folder is not None:
            self.folder = Path(folder) / f"features-{extractor}"
            self.folder.mkdir(parents=True, exist_ok=True)
            os.utime(self.folder)  # a use: the age prune goes by
            prune(Path(folder), keep=self.folder.name)

    def get(self, view: str, digest: str):
        vector = self.memory.get((view, digest))
        if vector is None and self.folder is not None:
            path = self.folder / view / f"{digest}.npy"
            if path.exists():
                vector = self.memory[(view, digest)] = np.load(path)
        return vector

    def put(self, view: str, digest: str, vector: np.ndarray) -> None:
        self.memory[(view, digest)] = vector
        if self.folder is not None:
            path = self.folder / view / f"{digest}.npy"
            path.parent.mkdir(exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, vector)
            files.write_atomic(path, buffer.getvalue(), durable=False)


def prune(folder: Path, keep: str, max_age_days: float = MAX_AGE_DAYS) -> list:
    """Remove the feature stores in folder unused for max_age_days (but `keep`); returns their names."""
    cutoff = time.time() - max_age_days * 86400
    removed = []
    for store in sorted(folder.glob("features-*")):
        if store.name != keep and store.is_dir() and store.stat().st_mtime < cutoff:
            shutil.rmtree(store, ignore_errors=True)
            removed.append(store.name)
    return removed


def compute(extractor, paths, preprocessing, view: str, batch_size: int = 32) -> np.ndarray:
    """Run the backbone over the files: (len(paths), dim) float32 features of one view.

    preprocessing: the model's images.Preprocessing.
    """
    dataset = (tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
               .map(preprocessing.load, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size)
               .map(lambda batch: transform(batch, view))
               .prefetch(tf.data.AUTOTUNE))
    return np.asarray(extractor.predict(dataset, verbose=0), np.float32)


def extract(extractor, paths, store: Store, preprocessing, views=("original",), digests=None) -> np.ndarray:
    """(len(views), len(paths), dim) features: read from the store where they are, computed once where not."""
    digests = digests or content_hashes(paths)
    out = []
    for view in views:
        found = [store.get(view, digest) for digest in digests]
        missing = [i for i, vector in enumerate(found) if vector is None]
        if missing:
            computed = compute(extractor, [paths[i] for i in missing], preprocessing, view)
            for i, vector in zip(missing, computed):
                store.put(view, digests[i], vector)
                found[i] = vector
        out.append(np.stack(found))
    return np.stack(out)


def store_for(cache: str, extractor: str, default_folder) -> Store:
    """The store --cache asks for: on disk (auto, disk, disk:PATH), or for this run only (memory, none)."""
    if cache in ("memory", "none"):
        return Store(extractor)
    return Store(extractor, cache[5:] if cache.startswith("disk:") else default_folder)


def dataset(vectors, labels, batch_size: int, shuffle_seed=None) -> tf.data.Dataset:
    """(features, label) batches of stored vectors, reshuffled every epoch when given a seed (training)."""
    batches = tf.data.Dataset.from_tensor_slices((vectors, labels))
    if shuffle_seed is not None:
        batches = batches.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return batches.batch(batch_size).prefetch(tf.data.AUTOTUNE)
