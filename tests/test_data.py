"""The split is leak-free: disjoint, complete, stratified, and the same on every epoch and every run."""
import numpy as np
import pytest

from happysad import data, images


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


def test_partitions_identical_across_epochs(faces_dir):
    """Iterate the real pipelines twice: each partition yields the same files every epoch."""
    classes = data.find_classes(faces_dir)
    files, _ = data.list_images(faces_dir, classes)
    parts = data.split(files, seed=3)
    lookup = {}
    for path in files.paths:
        lookup[images.load(path, 16).numpy().tobytes()] = path

    def epoch_files(dataset):
        return [lookup[image.tobytes()] for batch, _ in dataset for image in batch.numpy()]

    for name, seed in (("train", 3), ("validation", None), ("test", None)):
        dataset = data.make_dataset(parts[name], 16, 8, binary=True, shuffle_seed=seed, cache="memory")
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


def test_skipped_formats_are_reported_and_hidden_folders_ignored(tmp_path):
    folder = make_folder(tmp_path / "data", {"happy": 3, "sad": 3})
    (folder / "happy" / "x.webp").write_bytes(b"")
    (folder / ".quarantine" / "dup").mkdir(parents=True)
    classes = data.find_classes(folder)
    files, skipped = data.list_images(folder, classes)
    assert classes == ["happy", "sad"]
    assert [p.endswith("x.webp") for p in skipped] == [True]
    assert np.bincount(files.labels).tolist() == [3, 3]
