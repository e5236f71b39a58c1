"""Where decoded images are kept between epochs (in memory when they fit, else in tf.data's disk cache), and
the store of small arrays computed once per file (backbone features, near-copy fingerprints).

`choose_caches` decides per partition (`--cache auto|memory|disk[:PATH]|none`); `disk_cache` hands out a
cache file prefix that is safe against crashed and concurrent runs; `prune_disk_caches` removes caches no run
has used for CACHE_MAX_AGE_DAYS. A cache is named by `cache_key`, so any change of the files, the image size
or the preprocessing makes a new one. `ArrayStore` keeps arrays by the file's content, so a moved or renamed
file keeps them.
"""
import hashlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np

from happysad.files import write_atomic

DEFAULT_CACHE_DIR = ".cache/happysad"
# A disk cache nobody has used for this long is removed when a run opens the folder: every change of data,
# image size or preprocessing makes a new cache, and the old ones would otherwise fill the disk.
CACHE_MAX_AGE_DAYS = 14


def cache_key(files, preprocessing) -> str:
    """Changes whenever the images, their size on disk or the preprocessing (images.Preprocessing) change."""
    digest = hashlib.sha256(preprocessing.key.encode())
    for path, label in zip(files.paths, files.labels):
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def image_bytes(image_size: int) -> int:
    """Memory of one decoded image: float32 RGB."""
    return image_size * image_size * 3 * 4


def decoded_bytes(files, image_size: int) -> int:
    return len(files) * image_bytes(image_size)


def available_memory() -> int:
    """Bytes of RAM that new allocations can get now (Linux MemAvailable, counting reclaimable page cache)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return 4 * 1024**3


SETTINGS = "auto, memory, disk[:PATH] or none"


def valid_setting(setting: str) -> bool:
    """Whether a cache setting (--cache) is one of SETTINGS: the one check train, review and this module use."""
    return setting in ("auto", "memory", "disk", "none") or setting.startswith("disk:")


def memory_cache_budget() -> int:
    """Half the available RAM: the rest is for TensorFlow, the model, prefetched batches and everyone else."""
    return available_memory() // 2


def choose_caches(setting: str, partitions: dict, preprocessing, budget: int = None,
                  folder=DEFAULT_CACHE_DIR) -> dict:
    """How each partition keeps its decoded images between epochs: "memory", a disk cache prefix, or None.

    setting: "auto", "memory", "disk", "disk:PATH" or "none". auto keeps every partition in memory when all
    of them together fit in `budget` (default: half the available RAM), else on disk, so a dataset larger
    than memory trains instead of crashing. The test partition is read once and is never cached.
    """
    if not valid_setting(setting):
        raise ValueError(f"the cache setting must be {SETTINGS}, got {setting!r}")
    cached = {name: files for name, files in partitions.items() if name != "test"}
    if setting == "auto":
        total = sum(decoded_bytes(files, preprocessing.image_size) for files in cached.values())
        setting = "memory" if total <= (memory_cache_budget() if budget is None else budget) else "disk"
    caches = {name: None for name in partitions}
    for name, files in cached.items():
        if setting == "memory":
            caches[name] = "memory"
        elif setting.startswith("disk"):
            caches[name] = disk_cache(Path(setting[5:] or folder), cache_key(files, preprocessing))
    return caches


_LOCKS = {}


def disk_cache(folder, key: str):
    """A tf.data cache file prefix in `folder` for `key`, safe against crashed and concurrent runs; or None.

    tf.data writes <prefix>_0.lockfile and temporary data files while it fills a cache, and <prefix>.index
    once complete. A run that died mid-write leaves the lockfile behind, and every later run would fail with
    "There appears to be a concurrent caching iterator running". So a run that will write a cache holds an
    exclusive flock on <prefix>.lock for as long as it lives (the OS drops it when the process dies, however
    it dies): whoever gets the lock of an incomplete cache knows its leftovers are from a dead run and
    removes them. If another live run holds it (it is writing that cache right now), returns None: this run
    decodes every epoch instead of waiting. A complete cache is read without a lock, by any number of runs.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / f"images-{key}"
    prune_disk_caches(folder, keep=prefix.name)
    index = Path(f"{prefix}.index")
    if index.exists():
        os.utime(index)  # a use: the age prune_disk_caches goes by
        return str(prefix)
    if str(prefix) not in _LOCKS:
        lock = open(f"{prefix}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            print(f"note: another training run is writing the cache {prefix}; not caching this run")
            return None
        _LOCKS[str(prefix)] = lock
    for leftover in [*folder.glob(f"{prefix.name}_*"), *folder.glob(f"{prefix.name}.data-*")]:
        leftover.unlink(missing_ok=True)
    return str(prefix)


def prune_disk_caches(folder, keep: str = "", max_age_days: float = CACHE_MAX_AGE_DAYS) -> list:
    """Remove the caches in `folder` last used more than max_age_days ago (all their files); returns their names.

    A cache's age is its index file's time, renewed on every use (see disk_cache); an incomplete cache, its
    lock file's. A cache whose lock a live run holds is being written and is left alone, as is `keep`.
    """
    import fcntl

    cutoff = time.time() - max_age_days * 86400
    removed = []
    for marker in sorted([*Path(folder).glob("images-*.index"), *Path(folder).glob("images-*.lock")]):
        name = marker.name.rsplit(".", 1)[0]
        if name == keep or name in removed or not marker.exists() or marker.stat().st_mtime > cutoff:
            continue
        if Path(folder, f"{name}.index").exists() and marker.suffix == ".lock":
            continue  # a complete cache: its index's age decides
        if str(Path(folder, name)) in _LOCKS:  # this process is writing it
            continue
        with open(Path(folder, f"{name}.lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run is writing it
            for path in Path(folder).glob(f"{name}[._]*"):
                path.unlink(missing_ok=True)
        removed.append(name)
    return removed


class ArrayStore:
    """Small arrays (backbone features, near-copy fingerprints) by (kind, content hash): in this process's
    memory, and on disk when given a folder.

    On disk: FOLDER/<family>-<key>/<kind>/<sha256>.npy, each written atomically (happysad.files), so a run
    killed mid-write leaves no half array and concurrent runs can share a store. `key` names everything the
    arrays depend on besides the file's bytes; opening a store marks it used, and removes the stores of the
    same family that no run has opened for CACHE_MAX_AGE_DAYS.
    """

    def __init__(self, family: str, key: str, folder=None):
        self.memory = {}
        self.folder = None
        if folder is not None:
            self.folder = Path(folder) / f"{family}-{key}"
            self.folder.mkdir(parents=True, exist_ok=True)
            os.utime(self.folder)
            prune_stores(Path(folder), family, keep=self.folder.name)

    def get(self, kind: str, digest: str):
        array = self.memory.get((kind, digest))
        if array is None and self.folder is not None:
            path = self.folder / kind / f"{digest}.npy"
            if path.exists():
                array = self.memory[(kind, digest)] = np.load(path)
        return array

    def put(self, kind: str, digest: str, array: np.ndarray) -> None:
        self.memory[(kind, digest)] = array
        if self.folder is not None:
            path = self.folder / kind / f"{digest}.npy"
            path.parent.mkdir(exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, array)
            write_atomic(path, buffer.getvalue(), durable=False)


def prune_stores(folder: Path, family: str, keep: str, max_age_days: float = CACHE_MAX_AGE_DAYS) -> list:
    """Remove the stores of `family` in folder unused for max_age_days (but `keep`); returns their names."""
    cutoff = time.time() - max_age_days * 86400
    removed = []
    for store in sorted(folder.glob(f"{family}-*")):
        if store.name != keep and store.is_dir() and store.stat().st_mtime < cutoff:
            shutil.rmtree(store, ignore_errors=True)
            removed.append(store.name)
    return removed


def array_store(setting: str, family: str, key: str) -> ArrayStore:
    """The store --cache asks for: on disk (auto, disk, disk:PATH), or for this run only (memory, none)."""
    if setting in ("memory", "none"):
        return ArrayStore(family, key)
    return ArrayStore(family, key, setting[5:] if setting.startswith("disk:") else DEFAULT_CACHE_DIR)
