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
    dataset = data.ends_at_once(tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
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
    return np.stack([extract_joined({"": extractor}, paths, {"": store}, preprocessing, digests, view)[""]
                     for view in views])


def extract_joined(extractors: dict, paths, stores: dict, preprocessing, digests, view="original") -> dict:
    """{name: (len(paths), dim)} features of one view, each from its store (stores: {name: ArrayStore}) where
    it is there. The files missing from any store go through all the extractors ({name: network}, for the
    stores that lack some) in one pass: each file is decoded, and its face found, once. With
    preprocessing.face_beside each extractor takes the picture's or the face's channels, as its name says."""
    found = {name: [store.get(view, digest) for digest in digests] for name, store in stores.items()}
    missing = sorted({i for name in extractors for i, vector in enumerate(found[name]) if vector is None})
    if missing:
        computed = compute(models.joined_outputs(extractors, preprocessing.face_beside), [paths[i] for i in missing],
                           preprocessing, view)
        start = 0
        for name, extractor in extractors.items():
            stop = start + extractor.output.shape[-1]
            for i, vector in zip(missing, computed[:, start:stop]):
                stores[name].put(view, digests[i], vector)
                found[name][i] = vector
            start = stop
    return {name: np.stack(vectors) for name, vectors in found.items()}


def of_backbones(config, files: data.Files, digests: list) -> tuple:
    """({backbone: (images, dim) pooled features}, {backbone: how many were computed now}) of the
    configuration's backbones (train's or review's), each of what it reads (the picture, or its face:
    `config.preprocessing`), from the feature store where a run computed them. The backbones whose features
    are missing are built and run together, in one pass over the files. --arch auto leaves out, and says so,
    each backbone of AUTO_BACKBONES whose weights can be neither downloaded nor found in Keras' cache folder."""
    backbones = models.AUTO_BACKBONES if config.arch == models.AUTO else config.backbones
    stores = {arch: cache.array_store(config.cache, FAMILY, extractor_id(arch, config.weights,
                                                                        config.preprocessing((arch,))))
              for arch in backbones}
    computed = {arch: sum(stores[arch].get("original", digest) is None for digest in digests) for arch in backbones}
    mark, extractors = time.time(), {}
    for arch in (arch for arch in backbones if computed[arch]):
        try:
            extractors[arch] = models.pooled_output(models.build_linear((arch,), 2, config.image_size, config.weights))
        except models.BuildError as error:
            if config.arch != models.AUTO:
                raise
            print(f"note: --arch auto leaves out {arch}: {errors.for_command(error)}")
            del stores[arch]
    if not stores:
        raise models.BuildError(
            f"`arch` auto found no backbone weights: none of {', '.join(models.AUTO_BACKBONES)} could be "
            f"downloaded or found in Keras' cache folder {models.keras_cache_folder()}; put a weights file there, "
            "or name one backbone and its file (`arch` mobilenet `weights` PATH)")
    preprocessing = config.preprocessing(tuple(extractors) or tuple(stores))
    found = extract_joined(extractors, files.paths, stores, preprocessing, digests)
    for arch in stores:
        print(f"{arch} features: {computed[arch]} computed, {len(files) - computed[arch]} from the store")
    if extractors:
        print(f"{' and '.join(extractors)} in {time.time() - mark:.1f} s, one pass over {len(files)} images")
    return found, computed


def auto_candidates(backbones: tuple) -> list:
    """The feature sets --arch auto lets the cross-validation choose from: each backbone alone, and every
    combination of them."""
    return ["+".join(combination) for n in range(1, len(backbones) + 1)
            for combination in itertools.combinations(backbones, n)]


def candidate_sets(arch: str, per_backbone: dict) -> dict:
    """{name: (images, dim)} the feature sets the cross-validation chooses among, for train and review: with
    --arch auto each backbone found alone and together, else --arch's own; each backbone's part unit length."""
    names = auto_candidates(tuple(per_backbone)) if arch == models.AUTO else [arch]
    return {name: crossval.joined(per_backbone, name.split("+")) for name in names}


def only_learnt_faces(chosen: tuple) -> bool:
    """Whether every chosen backbone learnt faces, not ImageNet: then "fits no class" can measure only features
    blind to pictures unlike any photo (marks.FACE_FEATURES_CAVEAT, which train and review print)."""
    return all(models.BACKBONES[name].learnt_faces for name in chosen)


def domain_columns(chosen: tuple, per_backbone: dict) -> tuple:
    """((start, stop), ...) of the features "fits no class" measures (marks.Domain), in the chosen backbones'
    side-by-side vector: the ImageNet backbones' that read the whole picture, else those that read the face
    (with --faces all read it). () when all the features count: every chosen backbone is one of those, or
    none is (the expression network alone, whose features of text or noise lie as close to the photos as they
    lie to each other)."""
    imagenet = [name for name in chosen if not models.BACKBONES[name].learnt_faces]
    judges = [name for name in imagenet if not models.BACKBONES[name].reads_face] or imagenet
    if not judges or len(judges) == len(chosen):
        return ()
    ends = dict(zip(chosen, np.cumsum([per_backbone[name].shape[1] for name in chosen])))
    return tuple((int(ends[name] - per_backbone[name].shape[1]), int(ends[name])) for name in judges)


def dataset(vectors, labels, batch_size: int, shuffle_seed=None) -> tf.data.Dataset:
    """(features, label) batches of stored vectors, reshuffled every epoch when given a seed (training)."""
    batches = tf.data.Dataset.from_tensor_slices((vectors, labels))
    if shuffle_seed is not None:
        batches = batches.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.ends_at_once(batches.batch(batch_size).prefetch(tf.data.AUTOTUNE))
