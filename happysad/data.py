"""From a folder of class folders to leak-free tf.data pipelines.

`data/<class>/<image>` → file list → seeded, stratified split into train / validation / test file lists
→ one tf.data pipeline per partition: decode with `happysad.images.load`, cache, (train only) shuffle, batch,
prefetch.

Why file lists instead of the tutorial's `image_dataset_from_directory(shuffle=True)` + `take`/`skip`:
that dataset reshuffles on every pass, so `take`/`skip` hand different files to train, validation and test
on every epoch and the test images end up trained on. Splitting the *file list* once, with a seed, makes the
three partitions disjoint and identical on every epoch and every run, and lets the record list them exactly.
The files are found the way `image_dataset_from_directory` finds them: every non-hidden subfolder is a class
(sorted by name; the label is the index), searched recursively for the extensions it reads.
"""
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from happysad import images

PARTITIONS = ("train", "validation", "test")


class DataError(Exception):
    """A problem with the user's folder, reported as one line."""


@dataclass
class Files:
    """Image paths and their integer labels (indices into the class names)."""

    paths: list
    labels: list

    def __len__(self):
        return len(self.paths)

    def count_per_class(self, num_classes: int) -> list:
        return np.bincount(np.asarray(self.labels, dtype=int), minlength=num_classes).tolist()


def find_classes(data_dir) -> list:
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"data folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} is not a folder")
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise DataError(f"{data_dir} needs at least two class folders (one per label), found: {found}")
    return classes


def list_images(data_dir, class_names) -> tuple:
    """All trainable images under each class folder, in a fixed order.

    Returns (Files, skipped) where skipped lists the files image_dataset_from_directory would silently
    ignore (other extensions), so the caller can point at `happysad.clean`.
    """
    data_dir = Path(data_dir)
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        class_dir = data_dir / name
        if not class_dir.is_dir():
            raise DataError(f"class folder {class_dir} is missing")
        found = 0
        for root, dirs, filenames in os.walk(class_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = os.path.join(root, filename)
                if images.is_trainable_name(filename):
                    paths.append(path)
                    labels.append(label)
                    found += 1
                else:
                    skipped.append(path)
        if found == 0:
            raise DataError(f"class '{name}' has no images in {class_dir}")
    return Files(paths, labels), skipped


def split(files: Files, fractions=(0.7, 0.2, 0.1), seed: int = 1337) -> dict:
    """Seeded stratified split of a file list into PARTITIONS.

    Every class is shuffled with its own generator derived from the seed and cut by the fractions, so each
    partition holds about the same class balance and none is empty (a class needs at least 3 images).
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    labels = np.asarray(files.labels, dtype=int)
    parts = {name: ([], []) for name in PARTITIONS}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 3:
            raise DataError(
                f"class with label {label} has {len(members)} image(s); each class needs at least 3 "
                "(one each for training, validation and test)"
            )
        order = np.random.default_rng([seed, int(label)]).permutation(members)
        n_val = max(1, round(len(order) * fractions[1]))
        n_test = max(1, round(len(order) * fractions[2]))
        n_train = len(order) - n_val - n_test
        if n_train < 1:
            n_train, n_val = 1, len(order) - n_test - 1
        cuts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
                "test": order[n_train + n_val:]}
        for name, indices in cuts.items():
            parts[name][0].extend(files.paths[i] for i in indices)
            parts[name][1].extend(int(label) for _ in indices)
    return {name: Files(*parts[name]) for name in PARTITIONS}


def relative(files: Files, data_dir) -> list:
    """Paths relative to the data folder, '/'-separated: the form stored in a run's record."""
    return [Path(os.path.relpath(p, data_dir)).as_posix() for p in files.paths]


def cache_key(files: Files, image_size: int, preprocessing: str = "") -> str:
    """Changes whenever the images, their size on disk, the image size or the preprocessing change."""
    digest = hashlib.sha256(f"{image_size}|{preprocessing}".encode())
    for path, label in zip(files.paths, files.labels):
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def decoded_bytes(files: Files, image_size: int) -> int:
    return len(files) * image_size * image_size * 3 * 4


def make_dataset(files: Files, image_size: int, batch_size: int, *, binary: bool, shuffle_seed=None,
                 cache=None) -> tf.data.Dataset:
    """(image, label) batches for one partition.

    cache: None (decode every epoch), "memory", or a file path prefix for tf.data's on-disk cache.
    shuffle_seed: shuffle every epoch (training); None keeps the file order (validation, test).
    """
    label_dtype = tf.float32 if binary else tf.int32
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files.paths, tf.string), tf.constant(files.labels, label_dtype)))
    dataset = dataset.map(lambda path, label: (images.load(path, image_size), label),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if cache == "memory":
        dataset = dataset.cache()
    elif cache:
        dataset = dataset.cache(str(cache))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def find_undecodable(paths, image_size: int) -> list:
    """(path, reason) for each file TensorFlow's decoder rejects; used to explain a failed pipeline."""
    bad = []
    for path in paths:
        try:
            images.load(path, image_size)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as error:
            bad.append((path, images.error_reason(error)))
    return bad
