"""The split is leak-free: disjoint, complete, stratified, and the same on every epoch and every run."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_near_copies import cropped_copy, resized_copy

from happysad import data, features, images, sample
from happysad.runtime import tf


def make_folder(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i:03d}.jpg").write_bytes(b"not decoded by the split")
    return root


def test_split_is_disjoint_complete_and_stratified(tmp_path):
    folder = make_folder(tmp_path / "data", {"happy": 50, "sad": 23, "zany": 7})
    classes = data.find_classes(folder)
    files, skipped = data.list_images(folder, classes)
    parts = data.split(files, (0.7, 0.2, 0.1), seed=5)
    sets = {name: set(parts[name].paths) for name in data.PARTITIONS}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert sorted(sets["train"] | sets["validation"] | sets["test"]) == sorted(files.paths)
    assert sum(len(parts[n]) for n in data.PARTITIONS) == len(files) == 80
    for name in data.PARTITIONS:
        assert all(c > 0 for c in parts[name].count_per_class(3)), name
        for path, label in zip(parts[name].paths, parts[name].labels):
            assert f"/{classes[label]}/" in path
    assert parts["train"].count_per_class(3) == [35, 16, 5]


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    folder = make_folder(tmp_path / "data", {"a": 30, "b": 30})
    files, _ = data.list_images(folder, data.find_classes(folder))
    first, again = data.split(files, seed=1), data.split(files, seed=1)
    other = data.split(files, seed=2)
    for name in data.PARTITIONS:
        assert first[name].paths == again[name].paths
    assert set(first["test"].paths) != set(other["test"].paths)


def test_near_copies_never_land_in_two_partitions(tmp_path):
    """Six faces per class get a resized, re-encoded copy and a cropped, brightened one beside them."""
    folder = tmp_path / "data"
    copies = {}
    for paths in sample.write_faces(folder, per_class=10, size=128, seed=4).values():
        for number, path in enumerate(paths[:6]):
            bgr = cv2.imread(str(path))
            small, cropped = path.with_name(f"{path.stem}-small.jpg"), path.with_name(f"{path.stem}-cropped.png")
            small.write_bytes(resized_copy(bgr))
            cropped.write_bytes(cropped_copy(bgr, 0.05 + 0.006 * number))
            copies[str(path)] = [str(small), str(cropped)]
    files, _ = data.list_images(folder, data.find_classes(folder))
    groups = data.near_copy_groups(files)
    group_of = dict(zip(files.paths, groups))
    assert len(files) == 44 and len(set(groups)) == 20  # every face, with its copies if it has some
    assert all({group_of[copy] for copy in others} == {group_of[path]} for path, others in copies.items())

    leaks = 0
    for seed in range(8):
        parts = data.split(files, seed=seed, groups=groups)
        partition = {path: name for name in data.PARTITIONS for path in parts[name].paths}
        assert sorted(partition) == sorted(files.paths)
        assert all(min(parts[name].count_per_class(2)) > 0 for name in data.PARTITIONS)
        for path, others in copies.items():
            assert {partition[copy] for copy in others} == {partition[path]}, (seed, path)
        assert data.split(files, seed=seed, groups=groups) == parts
        plain = data.split(files, seed=seed)
        partition = {path: name for name in data.PARTITIONS for path in plain[name].paths}
        leaks += sum(len({partition[copy] for copy in [path, *others]}) > 1 for path, others in copies.items())
    assert leaks > 0  # what the groups prevent: without them copies land on both sides


def test_group_split_is_stable_stratified_and_keeps_groups_whole():
    """Groups of 1 to 4 files, their files interleaved with other groups' (no images needed)."""
    paths, labels, groups = [], [], []
    for label, n_groups in enumerate((30, 12, 3)):
        for copy in range(4):
            for group in range(n_groups):
                if group % 4 >= copy:
                    paths.append(f"{label}/{group}-{copy}.jpg")
                    labels.append(label)
                    groups.append(f"{label}-{group}")
    files = data.Files(paths, labels)
    parts = data.split(files, seed=3, groups=groups)

    assert parts == data.split(files, seed=3, groups=groups)
    assert parts != data.split(files, seed=4, groups=groups)
    group_of = dict(zip(paths, groups))
    seen = [{group_of[path] for path in parts[name].paths} for name in data.PARTITIONS]
    assert not seen[0] & seen[1] and not seen[0] & seen[2] and not seen[1] & seen[2]
    assert sorted(p for name in data.PARTITIONS for p in parts[name].paths) == sorted(paths)
    per_class = np.array([parts[name].count_per_class(3) for name in data.PARTITIONS])
    assert per_class.min() > 0
    first_class = per_class[:, 0].sum()  # 73 images in 30 groups of up to 4
    assert abs(per_class[0, 0] - 0.7 * first_class) <= 4 and abs(per_class[2, 0] - 0.1 * first_class) <= 4
    # Every file its own group, in any spelling: the split the seed always gave.
    alone = data.split(files, seed=3)
    assert data.split(files, seed=3, groups=list(range(len(files)))) == alone
    assert data.split(files, seed=3, groups=paths) == alone


def test_partitions_identical_across_epochs(faces_dir):
    """Iterate the real pipelines twice: each partition yields the same files every epoch."""
    classes = data.find_classes(faces_dir)
    files, _ = data.list_images(faces_dir, classes)
    parts = data.split(files, seed=3)
    lookup = {}
    for path in files.paths:
        lookup[images.Preprocessing(16).load(path).numpy().tobytes()] = path

    def epoch_files(dataset):
        return [lookup[image.tobytes()] for batch, _ in dataset for image in batch.numpy()]

    for name, seed in (("train", 3), ("validation", None), ("test", None)):
        dataset = data.make_dataset(parts[name], images.Preprocessing(16), 8, binary=True, shuffle_seed=seed, cache="memory")
        first, second = epoch_files(dataset), epoch_files(dataset)
        assert sorted(first) == sorted(second) == sorted(parts[name].paths)
        if seed is None:
            assert first == second == parts[name].paths
        else:
            assert first != second  # reshuffled every epoch, always the same files


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.find_classes(tmp_path / "missing")
    make_folder(tmp_path / "one", {"happy": 3})
    with pytest.raises(data.DataError, match="at least two class folders"):
        data.find_classes(tmp_path / "one")
    folder = make_folder(tmp_path / "two", {"happy": 3})
    (folder / "sad").mkdir()
    (folder / "sad" / "notes.txt").write_text("x")
    with pytest.raises(data.DataError, match="class 'sad' has no images"):
        data.list_images(folder, data.find_classes(folder))
    folder = make_folder(tmp_path / "tiny", {"happy": 5, "sad": 2})
    files, _ = data.list_images(folder, data.find_classes(folder))
    with pytest.raises(data.DataError, match="at least 3"):
        data.split(files)
    files = data.Files(files.paths[:5], files.labels[:5])
    with pytest.raises(data.DataError, match="has 5 image.s., 2 once near copies count as one; .* at least 3"):
        data.split(files, groups=[0, 0, 0, 3, 3])
    with pytest.raises(ValueError, match="4 group ids for 5 files"):
        data.split(files, groups=[0, 1, 2, 3])


def test_skipped_formats_are_reported_and_hidden_folders_ignored(tmp_path):
    folder = make_folder(tmp_path / "data", {"happy": 3, "sad": 3})
    (folder / "happy" / "x.webp").write_bytes(b"")
    (folder / ".quarantine" / "dup").mkdir(parents=True)
    classes = data.find_classes(folder)
    files, skipped = data.list_images(folder, classes)
    assert classes == ["happy", "sad"]
    assert [p.endswith("x.webp") for p in skipped] == [True]
    assert np.bincount(files.labels).tolist() == [3, 3]



def test_a_decode_error_anywhere_in_a_run_names_the_file_and_other_errors_pass(faces_dir, tmp_path):
    files = copy_partition(faces_dir, tmp_path / "data", per_class=3)
    broken = Path(files.paths[-1])
    broken.write_bytes(broken.read_bytes()[:200])
    preprocessing = images.Preprocessing(32)
    with pytest.raises(data.DataError) as raised:
        with data.undecodable_explained(tmp_path / "data"):
            list(data.make_dataset(files, preprocessing, 2, binary=True))
    message = str(raised.value)
    assert message.startswith("1 file(s) cannot be decoded") and str(broken) in message
    assert f"happysad.clean {tmp_path / 'data'}" in message
    unrelated = tf.errors.InvalidArgumentError(None, None, "a shape that does not fit")
    broken.unlink()  # a folder whose every file decodes: the error is not the files', and passes unchanged
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not fit"):
        with data.undecodable_explained(tmp_path / "data"):
            raise unrelated

# Decoded-image caches: memory or disk by size, crash-safe disk caches, and shuffling that fits in memory.

def copy_partition(faces_dir, folder, per_class=12):
    """A small partition of copies of the session's faces (so a test may touch or delete them)."""
    import shutil

    files, _ = data.list_images(faces_dir, data.find_classes(faces_dir))
    paths, labels = [], []
    for label in sorted(set(files.labels)):
        members = [p for p, lab in zip(files.paths, files.labels) if lab == label][:per_class]
        for path in members:
            target = folder / str(label) / os.path.basename(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            paths.append(str(target))
            labels.append(label)
    return data.Files(paths, labels)


def epoch_items(dataset):
    """One pass as a list of (label, image bytes)."""
    return [(float(label), image.tobytes()) for batch, labels in dataset
            for image, label in zip(batch.numpy(), labels.numpy())]


@pytest.mark.parametrize("cache", [None, "memory", "disk"])
def test_training_order_mixes_classes_and_changes_every_epoch(faces_dir, tmp_path, monkeypatch, cache):
    """Every epoch sees every image once, in a new order, classes mixed from the first batch, even when the
    disk cache's shuffle buffer is far smaller than the partition (a dataset larger than memory)."""
    monkeypatch.setattr(data, "SHUFFLE_BUFFER_BYTES", 4 * data.image_bytes(16))
    part = copy_partition(faces_dir, tmp_path / "images")
    cache = str(tmp_path / "images-cache") if cache == "disk" else cache
    dataset = data.make_dataset(part, images.Preprocessing(16), 6, binary=True, shuffle_seed=3, cache=cache)
    epochs = [epoch_items(dataset) for _ in range(3)]
    everything = sorted(epoch_items(data.make_dataset(part, images.Preprocessing(16), 6, binary=True)))
    for items in epochs:
        assert sorted(items) == everything
        assert {label for label, _ in items[:6]} == {0.0, 1.0}
    assert epochs[0] != epochs[1] != epochs[2]


def test_every_pass_ends_without_waiting_for_tf_datas_autotuning_thread(faces_dir, tmp_path):
    """A finished pass's iterator waited, as it was destroyed, for the autotuning thread's next wake-up: up to
    10 s once a pass had run a while (8 s of a 22 s feature pass on 423 web photos)."""
    part = copy_partition(faces_dir, tmp_path / "images")
    pipelines = [data.make_dataset(part, images.Preprocessing(16), 6, binary=True, shuffle_seed=3, cache="memory"),
                 data.make_dataset(part, images.Preprocessing(16), 6, binary=True),
                 *data.fold_datasets(part, data.make_folds(part.labels, None, 3, seed=0), images.Preprocessing(16),
                                     binary=True, shuffle_seed=1, cache="memory")(0, 6)[:2],
                 features.dataset(np.zeros((len(part), 4), np.float32), np.asarray(part.labels), 6)]
    assert [pipeline.options().autotune.enabled for pipeline in pipelines] == [False] * len(pipelines)


def test_folds_keep_near_copies_together_and_spread_each_class():
    labels = np.array([0] * 30 + [1] * 20)
    groups = list(range(50))
    groups[1] = groups[2] = groups[3] = 0  # images 0-3: one photo and three near copies
    folds = data.make_folds(labels, groups, 5, seed=7)
    assert len(set(folds[:4])) == 1
    for label in (0, 1):
        counts = np.bincount(folds[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 3, counts  # at most the largest group apart
    np.testing.assert_array_equal(folds, data.make_folds(labels, groups, 5, seed=7))
    assert not np.array_equal(folds, data.make_folds(labels, groups, 5, seed=8))
    with pytest.raises(data.DataError, match="class sad has 2 image.*3 folds need at least 3"):
        data.make_folds(np.array([0, 0, 0, 1, 1, 1]), [0, 1, 2, 3, 4, 4], 3, seed=0, class_names=["happy", "sad"])


def test_holdout_is_stratified_and_shares_no_near_copy_with_the_rest():
    labels = [0] * 50 + [1] * 50
    files = data.Files([f"{i}.jpg" for i in range(100)], labels)
    groups = [i // 2 for i in range(100)]  # pairs of near copies
    rest, test = data.hold_out(files, 0.2, seed=3, groups=groups)
    assert sorted(rest.paths + test.paths, key=lambda p: int(p[:-4])) == files.paths
    assert test.count_per_class(2) in ([10, 10], [10, 12], [12, 10])
    group_of = dict(zip(files.paths, groups))
    assert not {group_of[p] for p in rest.paths} & {group_of[p] for p in test.paths}


def test_each_fold_trains_on_the_other_folds_and_scores_its_own(tmp_path):
    """Every image of the folder is a flat grey of its own level, so what a dataset yields names its files."""
    paths, labels = [], []
    for i in range(24):
        folder = tmp_path / ("happy" if i % 2 else "sad")
        folder.mkdir(exist_ok=True)
        paths.append(str(folder / f"{i:02d}.png"))
        labels.append(i % 2)
        cv2.imwrite(paths[-1], np.full((8, 8, 3), 10 * i, np.uint8))
    files = data.Files(paths, labels)
    folds = data.make_folds(labels, None, 3, seed=0)
    datasets = data.fold_datasets(files, folds, images.Preprocessing(8), binary=True, shuffle_seed=1,
                                  cache="memory")

    def levels(dataset):
        return [int(round(float(image[0, 0, 0]) * 255 / 10)) for batch, _ in dataset for image in batch]

    for k in range(3):
        training, held_out, seen, order = datasets(k, 5)
        assert sorted(levels(training)) == sorted(np.flatnonzero(folds != k).tolist())
        assert levels(held_out) == order.tolist() and sorted(order) == np.flatnonzero(folds == k).tolist()
        assert [label for _, batch in held_out for label in batch.numpy()] == [labels[i] for i in order]
        assert levels(training) != levels(training)  # reshuffled every epoch
        in_order, _, seen, _ = datasets(k, 5, shuffle=False)
        assert levels(in_order) == seen.tolist()
    everything, nothing, seen, _ = datasets(None, 5, drop_remainder=True)
    assert len(levels(everything)) == 20 and not levels(nothing)  # 24 images: 4 full batches of 5


def test_the_held_out_curve_gives_back_each_folds_probabilities_in_file_order(tmp_path):
    """The held-out batches come in the cache's mixed order; the curve puts them back in file order, so each
    probability lands on its own photo. A network whose output rises with the grey level shows where each went."""
    from happysad import callbacks
    from happysad.runtime import keras

    paths, labels = [], []
    for i in range(12):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        labels.append(i % 2)
        cv2.imwrite(paths[-1], np.full((8, 8, 3), 20 * i, np.uint8))
    folds = data.make_folds(labels, None, 3, seed=0)
    datasets = data.fold_datasets(data.Files(paths, labels), folds, images.Preprocessing(8), binary=True,
                                  shuffle_seed=1, cache="memory")
    network = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(1, activation="sigmoid")])
    network.set_weights([np.full((3, 1), 4.0, np.float32), np.array([-2.0], np.float32)])
    for k in range(3):
        _, held_out, _, order = datasets(k, 3)
        assert order.tolist() != sorted(order)  # mixed: the curve has something to put back
        curve = callbacks.HeldOutCurve(held_out, order)
        curve.set_model(network)
        curve.on_epoch_end(0)
        grey = 20 * np.flatnonzero(folds == k) / 255
        expected = 1 / (1 + np.exp(-(12 * grey - 2)))
        np.testing.assert_allclose(curve.probabilities[0][:, 1], expected, rtol=1e-5)


def test_the_held_out_curve_scores_the_mean_of_the_last_epochs_weights_and_the_fit_goes_on_from_its_own(
        tmp_path):
    """callbacks.AveragedWeights: the folds are scored, and the saved CNN keeps, the mean of the weights of
    the last `window` epochs; between epochs the fit's own weights are back in place."""
    from happysad import callbacks
    from happysad.runtime import keras

    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for i, path in enumerate(paths):
        cv2.imwrite(path, np.full((8, 8, 3), 60 * i, np.uint8))
    files = data.Files(paths, [0, 1, 0, 1])
    held_out = data.make_dataset(files, images.Preprocessing(8), 4, binary=True)
    network = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(1, activation="sigmoid")])
    curve, kept = callbacks.HeldOutCurve(held_out, np.arange(4), window=2), callbacks.AveragedWeights(2)
    grey = 60 * np.arange(4) / 255
    for epoch, bias in enumerate([-2.0, 0.0, 2.0]):  # what each epoch of a fit leaves
        network.set_weights([np.full((3, 1), 4.0, np.float32), np.array([bias], np.float32)])
        for callback in (curve, kept):
            callback.set_model(network)
            callback.on_epoch_end(epoch)
        assert network.get_weights()[1][0] == bias  # the fit goes on from its own weights
        mean_bias = np.mean([-2.0, 0.0, 2.0][max(0, epoch - 1):epoch + 1])
        np.testing.assert_allclose(curve.probabilities[epoch][:, 1], 1 / (1 + np.exp(-(12 * grey + mean_bias))),
                                   rtol=1e-5)
    kept.average()
    assert network.get_weights()[1][0] == pytest.approx(1.0)
