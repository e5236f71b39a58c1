"""Decoded-image caches: memory or disk by size, named by what they hold, safe against crashed and concurrent
runs, and pruned when unused for weeks; the store of arrays by file content."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_data import copy_partition, epoch_items

from happysad import cache as image_cache, data, images


def test_auto_cache_is_memory_within_budget_else_disk_and_test_is_never_cached(faces_dir, tmp_path):
    files, _ = data.list_images(faces_dir, data.find_classes(faces_dir))
    parts = data.split(files, seed=1)
    needed = image_cache.decoded_bytes(parts["train"], 16) + image_cache.decoded_bytes(parts["validation"], 16)
    fits = image_cache.choose_caches("auto", parts, images.Preprocessing(16), budget=needed, folder=tmp_path)
    assert fits == {"train": "memory", "validation": "memory", "test": None}
    too_big = image_cache.choose_caches("auto", parts, images.Preprocessing(16), budget=needed - 1, folder=tmp_path)
    assert too_big["test"] is None and too_big["train"] != too_big["validation"]
    assert all(too_big[name].startswith(str(tmp_path / "images-")) for name in ("train", "validation"))
    assert image_cache.choose_caches("none", parts, images.Preprocessing(16)) == {name: None for name in data.PARTITIONS}
    elsewhere = image_cache.choose_caches(f"disk:{tmp_path / 'other'}", parts, images.Preprocessing(16))
    assert elsewhere["train"].startswith(str(tmp_path / "other" / "images-"))
    assert 0 < image_cache.memory_cache_budget() < image_cache.available_memory()
    with pytest.raises(ValueError, match="the cache setting must be"):
        image_cache.choose_caches("ram", parts, images.Preprocessing(16))


def test_cache_key_changes_with_the_data_the_size_and_the_preprocessing(faces_dir, tmp_path):
    part = copy_partition(faces_dir, tmp_path, per_class=3)
    key = image_cache.cache_key(part, images.Preprocessing(16))
    assert image_cache.cache_key(part, images.Preprocessing(16)) == key
    others = (images.Preprocessing(24), images.Preprocessing(16, faces=True))
    assert len({key, *(image_cache.cache_key(part, preprocessing) for preprocessing in others)}) == 3
    fewer = data.Files(part.paths[1:], part.labels[1:])
    assert image_cache.cache_key(fewer, images.Preprocessing(16)) != key
    os.utime(part.paths[0], ns=(0, 0))  # the same file, edited (new modification time)
    assert image_cache.cache_key(part, images.Preprocessing(16)) != key


def test_disk_cache_recovers_from_a_crashed_writer_then_is_reused(faces_dir, tmp_path):
    part = copy_partition(faces_dir, tmp_path / "images")
    key = image_cache.cache_key(part, images.Preprocessing(16))
    prefix = tmp_path / "cache" / f"images-{key}"
    prefix.parent.mkdir()

    def leave_crash_debris():
        """What tf.data leaves when the process writing a cache is killed (seen with tensorflow 2.21)."""
        Path(f"{prefix}_0.lockfile").write_text("Created at: 1700000000")
        Path(f"{prefix}_0.data-00000-of-00001.tempstate42").write_bytes(b"")

    leave_crash_debris()
    with pytest.raises(tf.errors.AlreadyExistsError):  # what every later run got before disk_cache
        epoch_items(data.make_dataset(part, images.Preprocessing(16), 8, binary=True, cache=str(prefix)))
    leave_crash_debris()
    cache = image_cache.choose_caches("disk", {"train": part}, images.Preprocessing(16), folder=prefix.parent)["train"]
    assert cache == str(prefix)
    assert not list(prefix.parent.glob(f"{prefix.name}_*"))
    dataset = data.make_dataset(part, images.Preprocessing(16), 8, binary=True, cache=cache)
    first = epoch_items(dataset)
    assert Path(f"{prefix}.index").exists()
    assert first == epoch_items(data.make_dataset(part, images.Preprocessing(16), 8, binary=True, cache=None))
    for path in part.paths:  # a complete cache is read back, nothing is decoded again
        os.remove(path)
    assert image_cache.disk_cache(prefix.parent, key) == cache
    assert epoch_items(data.make_dataset(part, images.Preprocessing(16), 8, binary=True, cache=cache)) == first


def test_disk_cache_being_written_by_a_live_run_is_left_alone(tmp_path):
    import fcntl

    prefix = tmp_path / "images-0123456789abcdef"
    Path(f"{prefix}_0.lockfile").write_text("Created at: 1700000000")
    with open(f"{prefix}.lock", "w") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert image_cache.disk_cache(tmp_path, "0123456789abcdef") is None
        assert Path(f"{prefix}_0.lockfile").exists()
    # That run has ended (its lock is gone): what it left is debris, and the cache is ours to write.
    assert image_cache.disk_cache(tmp_path, "0123456789abcdef") == str(prefix)
    assert not Path(f"{prefix}_0.lockfile").exists()


def test_caches_unused_for_weeks_are_pruned_and_live_or_recent_ones_kept(tmp_path):
    import fcntl

    old = time.time() - (image_cache.CACHE_MAX_AGE_DAYS + 1) * 86400

    def cache(key, complete=True, age=old):
        prefix = tmp_path / f"images-{key}"
        files = [Path(f"{prefix}.lock")]
        if complete:
            files += [Path(f"{prefix}.index"), Path(f"{prefix}.data-00000-of-00001")]
        else:
            files += [Path(f"{prefix}_0.lockfile"), Path(f"{prefix}_0.data-00000-of-00001.tempstate1")]
        for path in files:
            path.write_bytes(b"x")
            os.utime(path, (age, age))
        return files

    stale, writing, recent, crashed, wanted = (f"{n:016x}" for n in range(5))
    stale_files, crashed_files = cache(stale), cache(crashed, complete=False)
    writing_files, recent_files = cache(writing, complete=False), cache(recent, age=time.time())
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("not a cache")
    os.utime(unrelated, (old, old))
    with open(tmp_path / f"images-{writing}.lock", "a") as live_run:
        fcntl.flock(live_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert image_cache.disk_cache(tmp_path, wanted) == str(tmp_path / f"images-{wanted}")

    assert not any(path.exists() for path in stale_files + crashed_files)
    assert all(path.exists() for path in writing_files + recent_files) and unrelated.exists()
    # Using a cache renews it: a complete cache read today is not pruned in two weeks' time.
    index = tmp_path / f"images-{recent}.index"
    os.utime(index, (old, old))
    image_cache.disk_cache(tmp_path, recent)
    assert time.time() - index.stat().st_mtime < 60


def test_arrays_are_stored_by_content_and_unused_stores_of_the_same_family_are_pruned(tmp_path):
    import os
    import time

    stale = time.time() - (image_cache.CACHE_MAX_AGE_DAYS + 1) * 86400
    for name in ("features-old", "features-recent", "near-copies-old"):
        (tmp_path / name).mkdir()
    for name in ("features-old", "near-copies-old"):
        os.utime(tmp_path / name, (stale, stale))
    store = image_cache.ArrayStore("features", "new", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features-new", "features-recent", "near-copies-old"]
    store.put("original", "ab12", np.arange(3.0))
    again = image_cache.ArrayStore("features", "new", tmp_path)  # another run, reading from disk
    np.testing.assert_array_equal(again.get("original", "ab12"), np.arange(3.0))
    assert again.get("flip", "ab12") is None and again.get("original", "cd34") is None
    assert image_cache.array_store("memory", "features", "new").folder is None
    assert image_cache.array_store(f"disk:{tmp_path / 'elsewhere'}", "features", "k").folder == \
        tmp_path / "elsewhere" / "features-k"
