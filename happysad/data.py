"""From a folder of class folders to leak-free tf.data pipelines.

`data/<class>/<image>` → file list → seeded, stratified split into train / validation / test file lists
→ one tf.data pipeline per partition: decode with `happysad.images.Preprocessing.load`, cache, (train only)
shuffle, batch, prefetch; without tf.data's autotuning thread, so that a pass ends with its last batch
(`ends_at_once`, which every pipeline of happysad goes through).

Why file lists instead of the tutorial's `image_dataset_from_directory(shuffle=True)` + `take`/`skip`:
that dataset reshuffles on every pass, so `take`/`skip` hand different files to train, validation and test
on every epoch and the test images end up trained on. Splitting the *file list* once, with a seed, makes the
three partitions disjoint and identical on every epoch and every run, and lets the record list them exactly.
The files are found the way `image_dataset_from_directory` finds them: every non-hidden subfolder is a class
(sorted by name; the label is the index), searched recursively for the extensions it reads.
"""
from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from happysad import defaults, images, near_copies
from happysad.errors import SettingError
from happysad.cache import image_bytes
from happysad.files import sha256_each
from happysad.runtime import deferred, tf

model_selection = deferred("sklearn.model_selection", after_tensorflow=False)

PARTITIONS = ("train", "validation", "test")
# Shuffle buffer of a disk-cached partition (a memory-cached one shuffles all of it at no extra cost).
SHUFFLE_BUFFER_BYTES = 1024**3


class DataError(SettingError):
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

    def subset(self, indices) -> "Files":
        return Files([self.paths[i] for i in indices], [self.labels[i] for i in indices])

    def shard(self, index: int, count: int) -> "Files":
        """Share `index` of `count` (a worker's, when several machines train): strided, so every file goes to
        one share and classes stay mixed, and all shares have the same size (short ones repeat a file)."""
        if count == 1:
            return self
        size = -(-len(self) // count)
        paths, labels = self.paths[index::count], self.labels[index::count]
        return Files(paths + paths[:size - len(paths)], labels + labels[:size - len(labels)])


def class_folders(data_dir) -> list:
    """Every non-hidden subfolder of data_dir, sorted: the classes, as the cleaner and the loader see them."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"data folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} is not a folder")
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_classes(data_dir) -> list:
    """The class names in label order; training needs at least two."""
    classes = class_folders(data_dir)
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise DataError(f"{data_dir} needs at least two class folders (one per label), found: {found}")
    return classes


def walk_class(class_dir) -> tuple:
    """(files, hidden) under one class folder, recursively: every non-hidden file in the loader's order (a
    folder's files sorted by name, then its subfolders, sorted), and the hidden files and folders passed
    over (names starting with ".", such as .DS_Store), which neither training nor clean looks into."""
    files, hidden = [], []
    for root, dirs, names in os.walk(class_dir):
        hidden += [os.path.join(root, name) for name in sorted(dirs) + sorted(names) if name.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, name) for name in sorted(names) if not name.startswith(".")]
    return files, hidden


def clean_command(data_dir, *options) -> str:
    """The clean command for data_dir, quoted for the shell (a folder name may hold spaces)."""
    return shlex.join(["python", "-m", "happysad.clean", str(data_dir), *options])


def skipped_note(skipped: list, data_dir) -> str:
    """What train and review say of the files list_images skipped."""
    return (f"note: {len(skipped)} file(s) with extensions training does not read are ignored (e.g. {skipped[0]}): "
            f"run `{clean_command(data_dir)}` to convert or quarantine them")


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
        every, _ = walk_class(class_dir)
        found = [path for path in every if images.is_trainable_name(path)]
        if not found:
            raise DataError(f"class '{name}' has no images in {class_dir}")
        paths += found
        labels += [label] * len(found)
        skipped += [path for path in every if not images.is_trainable_name(path)]
    return Files(paths, labels), skipped


def check_readable(paths, data_dir) -> None:
    """Raise a DataError naming the files a run could not read (a link to nothing, no permission to read),
    before it starts; clean moves them aside."""
    bad = [(path, "a link to nothing" if not os.path.exists(path) else "no permission to read it")
           for path in paths if not os.access(path, os.R_OK)]
    if bad:
        raise files_error(bad, "be read", data_dir)


def files_error(bad: list, cannot: str, data_dir) -> DataError:
    """One line naming the first files of (path, reason) that a run cannot use, with the clean command."""
    listing = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return DataError(f"{len(bad)} file(s) cannot {cannot}: {listing}{more}; run `{clean_command(data_dir)}` first")


def split(files: Files, fractions=(0.7, 0.2, 0.1), seed: int = defaults.SEED, groups=None) -> dict:
    """Seeded stratified split of a file list into PARTITIONS that never separates a group of files.

    groups: one id per file (near_copy_groups): files sharing an id, copies of one photo, always land in the
    same partition, or the model would be tested on pictures it trained on. None: every file is its own group.
    Each class's groups (a group belongs to the class of its first file) are shuffled with a generator derived
    from the seed and the label, then cut where the running image count comes closest to the fractions, so
    each partition holds about the same class balance and none is empty (a class needs at least 3 groups).
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    labels = np.asarray(files.labels, dtype=int)
    groups = range(len(files)) if groups is None else groups
    if len(groups) != len(files):
        raise ValueError(f"split got {len(groups)} group ids for {len(files)} files")
    by_class = groups_by_class(labels, groups)
    parts = {name: ([], []) for name in PARTITIONS}
    for label in np.unique(labels):
        class_groups = by_class.get(int(label), [])
        if len(class_groups) < 3:
            count = int(np.sum(labels == label))
            copies = "" if len(class_groups) == count else f", {len(class_groups)} once near copies count as one"
            raise DataError(
                f"class with label {label} has {count} image(s){copies}; each class needs at least 3 "
                "(one each for training, validation and test)"
            )
        order = np.random.default_rng([seed, int(label)]).permutation(len(class_groups))
        # ends[k]: images in the first k shuffled groups. Cut after the group whose end is closest to the
        # target, leaving at least one group for each later partition.
        ends = np.cumsum([0] + [len(class_groups[i]) for i in order])
        count = int(ends[-1])
        n_val = max(1, round(count * fractions[1]))
        n_test = max(1, round(count * fractions[2]))
        n_train = max(1, count - n_val - n_test)
        train_end = 1 + int(np.argmin(np.abs(ends[1:-2] - n_train)))
        val_end = train_end + 1 + int(np.argmin(np.abs(ends[train_end + 1:-1] - (count - n_test))))
        cuts = {"train": order[:train_end], "validation": order[train_end:val_end], "test": order[val_end:]}
        for name, chosen in cuts.items():
            indices = [index for i in chosen for index in class_groups[i]]
            parts[name][0].extend(files.paths[i] for i in indices)
            parts[name][1].extend(int(labels[i]) for i in indices)
    return {name: Files(*parts[name]) for name in PARTITIONS}


def make_folds(labels, groups, n_folds: int, seed: int, class_names=None) -> np.ndarray:
    """The fold (0..n_folds-1) of each image for cross-validation: seeded, each class spread evenly over the
    folds (scikit-learn's StratifiedGroupKFold), every group of near copies in one fold, so no image is scored
    by a model that trained on its twin. train and review both cut their folds here."""
    labels = np.asarray(labels, dtype=int)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    for label, class_groups in sorted(groups_by_class(labels, groups).items()):
        if len(class_groups) < n_folds:
            name = class_names[label] if class_names else f"with label {label}"
            raise DataError(f"class {name} has {len(class_groups)} image(s) once near copies count as one; "
                            f"{n_folds} folds need at least {n_folds} (use fewer folds or add images)")
    folds = np.empty(len(labels), int)
    splitter = model_selection.StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[held_out] = fold
    for label in np.unique(labels):  # also a class whose images all sit in groups of another class's
        if len(np.unique(folds[labels == label])) < n_folds:
            name = class_names[label] if class_names else f"with label {label}"
            raise DataError(f"class {name} cannot be spread over {n_folds} folds (its images share near-copy "
                            "groups with other classes: run happysad.clean); use fewer folds or add images")
    return folds


def hold_out(files: Files, fraction: float, seed: int, groups, class_names=None) -> tuple:
    """(the rest, a test partition of 1/round(1/fraction) of the images): one fold of make_folds, so the test
    images are stratified and share no near copy with the rest."""
    try:
        test = make_folds(files.labels, groups, max(2, round(1 / fraction)), seed, class_names) == 0
    except DataError as error:
        raise DataError(f"`holdout` {fraction:g}: {error}".replace("use fewer folds", "hold out more")) from None
    return files.subset(np.flatnonzero(~test)), files.subset(np.flatnonzero(test))


def groups_by_class(labels, groups) -> dict:
    """{label: its groups, each the index list of its files}. A group belongs to the class of its first file
    (near copies in two classes are clean's label conflicts); the groups in the order of their first file."""
    by_class = {}
    for indices in near_copies.members(groups):
        by_class.setdefault(int(labels[indices[0]]), []).append(indices)
    return by_class


def near_copy_groups(files: Files, store=None, digests=None) -> list:
    """A group id per file, for split(groups=...): near copies of one photo share one (happysad.near_copies).

    Decodes every file once, as training does, unless the store (near_copies.FAMILY) has its fingerprint; one
    TensorFlow cannot decode is a group of its own.
    """
    if store is not None and digests is None:
        digests = sha256_each(files.paths)
    return near_copies.groups(near_copies.load_fingerprints(files.paths, store, digests), store=store,
                              digests=digests)


def class_weights(labels, num_classes: int) -> dict:
    """n_images / (n_classes * count) for each class, so every class weighs the same in the loss in total."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes)
    return {index: float(len(labels) / (num_classes * count)) for index, count in enumerate(counts)}


def relative(files: Files, data_dir) -> list:
    """Paths relative to the data folder, '/'-separated: the form stored in a run's record."""
    return [Path(os.path.relpath(p, data_dir)).as_posix() for p in files.paths]


def make_dataset(files: Files, preprocessing: images.Preprocessing, batch_size: int, *, binary: bool,
                 shuffle_seed=None, cache=None, drop_remainder: bool = False) -> tf.data.Dataset:
    """(image, label) batches for one partition.

    cache: None (decode every epoch), "memory", or a file path prefix for tf.data's on-disk cache (see
    happysad.cache.choose_caches). Memory use: the whole partition for "memory", SHUFFLE_BUFFER_BYTES for a disk cache,
    a few batches for None.
    shuffle_seed: shuffle every epoch (training); None keeps the file order (validation, test).
    drop_remainder: only full batches (training on several replicas, see happysad.distribute).
    """
    if shuffle_seed is not None and cache is None:
        # Nothing cached: shuffle the file names (bytes each), not the decoded images (size²×12 bytes each).
        dataset = file_list(files, binary, mixed=True).shuffle(len(files), seed=shuffle_seed,
                                                                reshuffle_each_iteration=True)
        return batched(decoded(dataset, preprocessing), batch_size, drop_remainder=drop_remainder)
    dataset = decoded(file_list(files, binary, mixed=shuffle_seed is not None), preprocessing, cache)
    return batched(dataset, batch_size, shuffle_seed=shuffle_seed, buffer=shuffle_buffer(len(files), preprocessing,
                                                                                         cache),
                   drop_remainder=drop_remainder)


def fold_datasets(files: Files, folds, preprocessing: images.Preprocessing, *, binary: bool, shuffle_seed: int,
                  cache=None):
    """For cross-validation on images: datasets(k, batch_size, drop_remainder=False, shuffle=True) -> (batches
    of every fold but k, shuffled unless not `shuffle`; batches of fold k; the index in `files` of each image of
    the first (when not shuffled) and of the second, in their order). k None: every image, none held out.
    Every fit of the loop reads one decoded copy of the folder (`cache` as make_dataset's, of all the files)."""
    folds = np.asarray(folds, np.int32)
    order = np.random.default_rng(0).permutation(len(files))  # classes mixed, as a training partition's
    everything = tf.data.Dataset.zip((decoded(file_list(files.subset(order), binary), preprocessing, cache),
                                      tf.data.Dataset.from_tensor_slices(folds[order])))

    def in_folds(keep, count: int) -> tf.data.Dataset:
        def kept(example, fold):
            return keep(fold)

        def image_and_label(example, fold):
            return example

        # The count told, so Keras knows an epoch's steps from the first epoch on.
        return everything.filter(kept).map(image_and_label).apply(tf.data.experimental.assert_cardinality(count))

    def datasets(k, batch_size: int, drop_remainder: bool = False, shuffle: bool = True) -> tuple:
        held = -1 if k is None else k
        training, held_out = order[folds[order] != held], order[folds[order] == held]
        return (batched(in_folds(lambda fold: fold != held, len(training)), batch_size,
                        shuffle_seed=shuffle_seed if shuffle else None,
                        buffer=shuffle_buffer(len(training), preprocessing, cache), drop_remainder=drop_remainder),
                batched(in_folds(lambda fold: fold == held, len(held_out)), batch_size), training, held_out)

    return datasets


def file_list(files: Files, binary: bool, mixed: bool = False) -> tf.data.Dataset:
    """(path, label) of each file. mixed: in a fixed permutation, so a training partition (listed class by
    class) gives a bounded shuffle every class at once, and the order a disk cache holds depends only on its
    file list (its key)."""
    paths, labels = files.paths, files.labels
    if mixed:
        order = np.random.default_rng(0).permutation(len(paths))
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
    return tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                               tf.constant(labels, tf.float32 if binary else tf.int32)))


def decoded(file_dataset: tf.data.Dataset, preprocessing: images.Preprocessing, cache=None) -> tf.data.Dataset:
    """(image, label) of each (path, label), decoded by the one preprocessing, kept in `cache` if any."""
    dataset = file_dataset.map(lambda path, label: (preprocessing.load(path), label),
                               num_parallel_calls=tf.data.AUTOTUNE)
    if cache == "memory":
        return dataset.cache()
    return dataset.cache(str(cache)) if cache else dataset


def shuffle_buffer(count: int, preprocessing: images.Preprocessing, cache) -> int:
    """A memory cache's buffer holds the cached tensors themselves (shared, not copied): all of them cost no
    memory. Images read back from a disk cache, or decoded anew, are fresh copies: bounded, so a dataset larger
    than memory fits."""
    if cache == "memory":
        return max(1, count)
    return max(1, min(count, SHUFFLE_BUFFER_BYTES // image_bytes(preprocessing.image_size)))


def batched(dataset: tf.data.Dataset, batch_size: int, *, shuffle_seed=None, buffer: int = 1,
            drop_remainder: bool = False) -> tf.data.Dataset:
    if shuffle_seed is not None and buffer > 1:
        dataset = dataset.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ends_at_once(dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE))


def ends_at_once(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset without tf.data's autotuning thread. A finished pass's iterator waits, as it is destroyed,
    for that thread's next wake-up, which comes up to 10 s apart once a pass has run a while: 8 s of a 22 s
    feature pass over 423 web photos. The parallel maps still run one call per core."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


@contextlib.contextmanager
def undecodable_explained(data_dir):
    """Turn TensorFlow's decode error, wherever a run over data_dir's class folders meets it, into a DataError
    naming the files that cannot be decoded (and the clean command); any other error, or one no file explains,
    passes unchanged. Only when such an error comes is the folder decoded again, file by file, to find them."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        bad = find_undecodable(list_images(data_dir, find_classes(data_dir))[0].paths)
        if not bad:
            raise
        raise files_error(bad, "be decoded by TensorFlow", data_dir) from None


def find_undecodable(paths) -> list:
    """(path, reason) for each file TensorFlow's decoder rejects: what every preprocessing starts with."""
    bad = []
    for path in paths:
        try:
            images.decode_pixels(tf.io.read_file(path))
        except tf.errors.OpError as error:  # damaged, gone, no permission to read...
            bad.append((path, images.error_reason(error)))
    return bad
