"""Backbone features, computed once per image and stored: the pretrained path trains its head on them.

A frozen ImageNet backbone maps an image to the same vector every time, so running it for every fit (as
`fit` on images does every epoch) repeats the expensive part of training for nothing. Here each image goes
through the backbone once and its pooled features are stored; the cross-validated head (happysad.crossval),
or the first stage of fine-tuning, trains on the stored vectors in seconds, and a second run (another seed,
other folds) reads them and skips the backbone entirely.

A stored vector is found by what it depends on: the file's bytes (sha256), the backbone, its weights, the
image size, the preprocessing and the view. Views are fixed augmentations computed once per training image
(`VIEWS`), instead of random ones redrawn every epoch.
"""
from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path

import numpy as np

from happysad import cache, console, crossval, data, errors, files, model as models
from happysad.cache import ArrayStore
from happysad.runtime import tf

# Stored views per image, by --views. "zoom" is the central 80 % of the picture, resized back up.
VIEWS = {1: ("original",), 2: ("original", "flip"), 4: ("original", "flip", "zoom", "zoom-flip")}
FORMAT = "features-v2"  # changes whenever what a stored vector means changes (v2: the expression network's shrink)
FAMILY = "features"  # the stores' name in the cache folder: features-<extractor_id>
PROGRESS_FROM = 200  # images: below that, the backbone is done in a few seconds


def transform(batch: tf.Tensor, view: str) -> tf.Tensor:
    """One view of a batch of preprocessed images (float32 in [0, 1])."""
    if view.startswith("zoom"):
        size = batch.shape[1]
        batch = tf.image.resize(tf.image.central_crop(batch, 0.8), (size, size), method="bilinear")
    if view.endswith("flip"):
        batch = tf.image.flip_left_right(batch)
    return batch


def extractor_id(arch: str, weights: str, preprocessing) -> str:
    """What the vectors of one backbone depend on, apart from the image: a weights file counts by its bytes."""
    weights_id = weights
    if weights not in ("imagenet", "none") and Path(weights).is_file():
        weights_id = files.sha256(weights)
    text = f"{FORMAT}|{arch}|{weights_id}|{preprocessing.key}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compute(extractor, paths, preprocessing, view: str, batch_size: int = 32) -> np.ndarray:
    """Run the backbone over the files: (len(paths), dim) float32 features of one view, with a progress bar
    (images done, time per image, time left) from PROGRESS_FROM images on.

    preprocessing: the model's images.Preprocessing.
    """
    dataset = (tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
               .map(preprocessing.load, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size)
               .map(lambda batch: transform(batch, view))
               .prefetch(tf.data.AUTOTUNE))
    computed = []
    with console.progress(len(paths), "image", PROGRESS_FROM) as progress:
        for batch in dataset:
            computed.append(np.asarray(extractor.predict_on_batch(batch), np.float32))
            progress.update(len(computed[-1]))
    return np.concatenate(computed)


def extract(extractor, paths, store: ArrayStore, preprocessing, views=("original",), digests=None) -> np.ndarray:
    """(len(views), len(paths), dim) features: read from the store (a cache.ArrayStore of the family FAMILY,
    keyed by extractor_id) where they are, computed once where not."""
    digests = digests or files.sha256_each(paths)
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


def of_backbones(config, files: data.Files, digests: list) -> tuple:
    """({backbone: (images, dim) pooled features}, {backbone: how many were computed now}) of the
    configuration's backbones (train's or review's), each of what it reads (the picture, or its face:
    `config.preprocessing`), from the feature store where a run computed them; a backbone is built only when
    some are missing. --arch auto leaves out, and says so, each backbone of AUTO_BACKBONES whose weights can be
    neither downloaded nor found in Keras' cache folder."""
    found, computed = {}, {}
    for arch in models.AUTO_BACKBONES if config.arch == models.AUTO else config.backbones:
        preprocessing = config.preprocessing((arch,))
        store = cache.array_store(config.cache, FAMILY, extractor_id(arch, config.weights, preprocessing))
        computed[arch] = sum(store.get("original", digest) is None for digest in digests)
        mark = time.time()
        try:
            extractor = models.pooled_output(models.build_linear((arch,), 2, preprocessing.image_size,
                                                                  config.weights)) if computed[arch] else None
        except models.BuildError as error:
            if config.arch != models.AUTO:
                raise
            print(f"note: --arch auto leaves out {arch}: {errors.for_command(error)}")
            continue
        with data.undecodable_explained(files.paths, preprocessing, config.data):
            found[arch] = extract(extractor, files.paths, store, preprocessing, digests=digests)[0]
        print(f"{arch} features: {computed[arch]} computed in {time.time() - mark:.1f} s, "
              f"{len(files) - computed[arch]} from the store")
    if not found:
        raise models.BuildError(
            f"`arch` auto found no backbone weights: none of {', '.join(models.AUTO_BACKBONES)} could be "
            f"downloaded or found in Keras' cache folder {models.keras_cache_folder()}; put a weights file there, "
            "or name one backbone and its file (`arch` mobilenet `weights` PATH)")
    return found, computed


def auto_candidates(backbones: tuple) -> list:
    """The feature sets --arch auto lets the cross-validation choose from: each backbone alone, and each pair."""
    return ["+".join(pair) for n in (1, 2) for pair in itertools.combinations(backbones, n)]


def candidate_sets(arch: str, per_backbone: dict) -> dict:
    """{name: (images, dim)} the feature sets the cross-validation chooses among, for train and review: with
    --arch auto each backbone found alone and each pair, else --arch's own; each backbone's part unit length."""
    names = auto_candidates(tuple(per_backbone)) if arch == models.AUTO else [arch]
    return {name: crossval.joined(per_backbone, name.split("+")) for name in names}


def picture_columns(chosen: tuple, per_backbone: dict) -> tuple:
    """((start, stop), ...) of the features of the chosen backbones that did not learn faces, in their
    side-by-side vector: what "fits no class" measures (marks.Domain). () when all of them count: none of them
    learnt faces, or all did (the expression network alone). With --faces they all read the face crop, and
    the face network's features are left out all the same."""
    reads_picture = [not models.BACKBONES[name].reads_face for name in chosen]
    if all(reads_picture) or not any(reads_picture):
        return ()
    ends = np.cumsum([per_backbone[name].shape[1] for name in chosen])
    return tuple((int(end - per_backbone[name].shape[1]), int(end))
                 for name, end, picture in zip(chosen, ends, reads_picture) if picture)


def dataset(vectors, labels, batch_size: int, shuffle_seed=None) -> tf.data.Dataset:
    """(features, label) batches of stored vectors, reshuffled every epoch when given a seed (training)."""
    batches = tf.data.Dataset.from_tensor_slices((vectors, labels))
    if shuffle_seed is not None:
        batches = batches.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return batches.batch(batch_size).prefetch(tf.data.AUTOTUNE)
