"""Near copies: the same photo resized, re-encoded, cropped, re-framed, letterboxed or mirrored.

A perceptual hash finds resized, re-encoded and lightly cropped copies in one pass over all pairs; keypoints
matched under one similarity transform find what no hash survives (see KEYPOINT_SIDE below).

Web-scraped class folders hold such copies. Under two labels they teach the model two answers for one picture
(happysad.clean quarantines them); under one label they are harmless to training, but a split that puts one
copy in training and another in test lets the model recall the test image instead of generalising, so the
split keeps each group of copies in one partition (happysad.data.split).

A fingerprint is a perceptual hash (pHash) of the image and of two centre crops of it (4% and 8% off every
side): grayscale, 64x64 INTER_AREA thumbnail, 2-D DCT, and one bit per coefficient of the 16x16 lowest
frequencies: above their median or not. Two images are as far apart as the closest pair of their hashes (the
number of bits that differ), so a copy with 5-8% cut off its borders still meets the original at a crop.

The README's "Why this hash" gives the measurements that chose it and THRESHOLD.

No hash tells a smiling drawing from the frowning version of the same emoji template: the mouth is too small a
detail. Such pairs group like copies, which is why clean moves conflicts into a quarantine that `--restore`
undoes and names the other copies in each finding.
"""
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from happysad import console, files, images
from happysad.runtime import tf

THUMBNAIL = 64  # pixels of the square the DCT runs on
SQUARE = 2 * THUMBNAIL  # the picture is first reduced to this square, then cropped
HASH_SIZE = 16  # the 16x16 lowest frequencies: 256 bits per hash
CROPS = (0.0, 0.04, 0.08)  # fraction cut off every side before hashing, one hash each
FAMILY, VERSION = "near-copies", "v3"  # stored fingerprints: VERSION changes whenever fingerprint() does
# Largest distance (differing bits of the closest pair of hashes) at which two images are near copies: the
# README's "Why this hash" says what it catches and joins on web photos and generated faces.
THRESHOLD = 48


# Re-framed copies (cut to another aspect ratio, cropped by 10-25 %, bands added, mirrored) are beyond any hash:
# they are found by keypoints. Each picture's ORB keypoints (and its mirror's) are stored; a bag of their
# binary words ranks, for each picture, the others that share the most rare words; each of its NEIGHBOURS
# best (and best mirrored) is a candidate, confirmed when a RANSAC similarity transform (shift, turn, one
# scale) maps at least MIN_INLIERS of its ratio-tested matches to within REPROJECTION. The README's "Near
# copies" says what these settings catch and miss on web photos and generated faces.
KEYPOINT_SIDE = 512  # longer side of the picture keypoints are found on
KEYPOINTS = 500  # at most, per picture and per mirror
NEIGHBOURS = 5
MIN_INLIERS = 50
REPROJECTION = 2.0  # pixels (at KEYPOINT_SIDE) a match may land off the transform and still count
SCALES = (0.25, 4.0)  # the transform's scale between a copy and its original, at most 4x either way
RATIO = 0.75  # Lowe's ratio test: the best match must be clearly better than the second
WORD_BITS, WORD_TABLES = 10, 4  # a keypoint's words: 4 disjoint 10-bit pieces of its 256-bit descriptor
# Progress shows from this many files to fingerprint (about 10 ms each) or pairs to check (about 1 ms each):
# below that, a few seconds.
PROGRESS_FROM = {"file": 500, "pair": 5000}

_local = threading.local()


@dataclass(frozen=True)
class Fingerprint:
    """What near copies are found by: pHashes for the hash, ORB keypoints of the picture and its mirror."""

    hashes: np.ndarray  # (len(CROPS), 4) uint64: one 256-bit pHash per crop
    points: np.ndarray  # (keypoints, 3) float32: x, y, and 1 where the keypoint is of the mirrored picture
    descriptors: np.ndarray  # (keypoints, 32) uint8: ORB's 256-bit descriptors

    def side(self, mirrored: bool) -> tuple:
        """(x, y positions, descriptors) of the picture's keypoints or of its mirror's."""
        rows = self.points[:, 2] == float(mirrored)
        return self.points[rows, :2], self.descriptors[rows]


PARTS = tuple(part.name for part in fields(Fingerprint))  # what a store keeps of a fingerprint, one array each


def fingerprint(pixels: np.ndarray) -> Fingerprint:
    """The Fingerprint of a uint8 RGB image (height, width, 3)."""
    gray = cv2.cvtColor(np.asarray(pixels, np.uint8), cv2.COLOR_RGB2GRAY)
    points, descriptors = keypoints(gray)
    return Fingerprint(perceptual_hashes(gray), points, descriptors)


def keypoints(gray: np.ndarray) -> tuple:
    """ORB keypoints of a grey picture reduced to KEYPOINT_SIDE, and of its mirror: (points, descriptors)."""
    scale = KEYPOINT_SIDE / max(gray.shape)
    if scale < 1:
        height, width = gray.shape
        gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    if not hasattr(_local, "orb"):
        _local.orb = cv2.ORB_create(nfeatures=KEYPOINTS)
    points, descriptors = [], []
    if min(gray.shape) <= 2 * _local.orb.getEdgeThreshold():  # a strip or a dot: no room for a keypoint
        return np.zeros((0, 3), np.float32), np.zeros((0, 32), np.uint8)
    for mirrored, picture in ((0.0, gray), (1.0, np.ascontiguousarray(gray[:, ::-1]))):
        found, described = _local.orb.detectAndCompute(picture, None)
        if described is None:
            continue
        points.append(np.array([(*point.pt, mirrored) for point in found], np.float32))
        descriptors.append(described)
    if not points:
        return np.zeros((0, 3), np.float32), np.zeros((0, 32), np.uint8)
    return np.concatenate(points), np.concatenate(descriptors)


def perceptual_hashes(gray: np.ndarray) -> np.ndarray:
    """One 256-bit pHash per crop in CROPS (np.uint64, shape (3, 4)) of a grey picture."""
    # The crops are cut from one reduction of the whole picture. OpenCV averages whole blocks of pixels far
    # faster than it resizes by an odd ratio, so a large photo is first reduced by a whole factor.
    height, width = gray.shape
    factor = min(height, width) // SQUARE
    if factor > 1:
        gray = cv2.resize(gray[:height - height % factor, :width - width % factor],
                          (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    square = cv2.resize(gray, (SQUARE, SQUARE), interpolation=cv2.INTER_AREA)
    bits = []
    for crop in CROPS:
        cut = round(SQUARE * crop)
        part = square[cut:SQUARE - cut, cut:SQUARE - cut]
        thumbnail = cv2.resize(part, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = cv2.dct(thumbnail)[:HASH_SIZE, :HASH_SIZE].ravel()
        # The median leaves out the DC term (the mean brightness), which dwarfs every other coefficient.
        bits.append(low > np.median(low[1:]))
    return np.packbits(np.array(bits), axis=1).view(">u8").astype(np.uint64)


def file_fingerprint(path):
    """The fingerprint of an image file as training decodes it, or None if TensorFlow cannot decode it."""
    try:
        pixels = images.decode_pixels(Path(path).read_bytes())
    except tf.errors.OpError:
        return None
    return fingerprint(pixels.numpy())


def load_fingerprints(paths, store=None, digests=None) -> list:
    """fingerprint() of every file (None for one that TensorFlow cannot decode), in the order of paths.

    Decoded by happysad.images.decode_pixels, as training decodes them (JPEG, PNG, GIF, BMP). TensorFlow's
    decoders and OpenCV release the GIL, so threads keep every core busy. With a store (a cache.ArrayStore of
    the family FAMILY, keyed by VERSION), a file whose bytes were fingerprinted before is not decoded again;
    digests: the files' sha256 where the caller has them (files.sha256_each), so they are not read twice.
    """
    if store is not None and digests is None:
        digests = files.sha256_each(paths)
    found = [stored_fingerprint(store, digest) for digest in digests] if store is not None else [None] * len(paths)
    missing = [i for i, fingerprint in enumerate(found) if fingerprint is None]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool, \
            console.progress(len(missing), "file", PROGRESS_FROM["file"]) as progress:
        for i, fingerprint in zip(missing, pool.map(file_fingerprint, [paths[i] for i in missing])):
            found[i] = fingerprint
            progress.update(1)
            if store is not None and fingerprint is not None:
                keep(store, digests[i], fingerprint)
    return found


def keep(store, digest: str, fingerprint: Fingerprint) -> None:
    for part in PARTS:
        store.put(part, digest, getattr(fingerprint, part))


def stored_fingerprint(store, digest: str):
    parts = [store.get(part, digest) for part in PARTS]
    return None if any(part is None for part in parts) else Fingerprint(*parts)


def close_pairs(hashes: np.ndarray, max_distance: int):
    """(i, j) with i < j for every pair of fingerprints in hashes (n, crops, words) at most max_distance apart.

    All n^2 pairs, one word of one crop of every fingerprint at a time (contiguous, so numpy streams through
    it) and a block of rows at a time, so memory stays under 50 MiB: 0.1 s for 865 images, 4 s for 10,000.
    """
    n, crops, words = hashes.shape
    planes = np.ascontiguousarray(hashes.transpose(1, 2, 0))  # [crop, word] -> that word of every fingerprint
    rows = max(1, 2**21 // n)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        closest = np.full((stop - start, n - start), np.iinfo(np.uint16).max, np.uint16)
        for first in range(crops):
            for second in range(crops):
                differ = np.zeros_like(closest)
                for word in range(words):
                    differ += np.bitwise_count(planes[first, word, start:stop, None]
                                               ^ planes[second, word, None, start:])
                np.minimum(closest, differ, out=closest)
        for i, j in zip(*np.nonzero(closest <= max_distance)):
            if i < j:
                yield start + int(i), start + int(j)


def candidates(fingerprints: list) -> set:
    """(i, j, mirrored) with i < j: for each picture, the NEIGHBOURS others whose keypoints share the most rare
    words with its own, and the NEIGHBOURS whose mirrors do (mirrored: j's mirror). A bag of words with
    inverse document frequencies, as image retrieval ranks pictures: crops and bands leave most words."""
    n = len(fingerprints)
    vocabulary = WORD_TABLES << WORD_BITS
    present = {False: np.zeros((n, vocabulary), np.float32), True: np.zeros((n, vocabulary), np.float32)}
    powers = 1 << np.arange(WORD_BITS)
    for i, found in enumerate(fingerprints):
        for mirrored in (False, True):
            _, descriptors = found.side(mirrored)
            bits = np.unpackbits(descriptors, axis=1)
            for table in range(WORD_TABLES):
                words = bits[:, table * WORD_BITS:(table + 1) * WORD_BITS] @ powers + (table << WORD_BITS)
                present[mirrored][i, words] = 1.0
    weights = np.log((n + 1) / (present[False].sum(axis=0) + 1)).astype(np.float32)
    for mirrored, rows in present.items():
        rows *= weights
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    pairs = set()
    block = max(1, 2**22 // max(n, 1))
    for mirrored in (False, True):
        for start in range(0, n, block):
            similar = present[False][start:start + block] @ present[mirrored].T
            similar[np.arange(len(similar)), np.arange(start, start + len(similar))] = -1.0  # not itself
            nearest = np.argsort(-similar, axis=1)[:, :NEIGHBOURS]
            for offset, row in enumerate(nearest):
                i = start + offset
                pairs.update((min(i, int(j)), max(i, int(j)), mirrored) for j in row if similar[offset, j] > 0)
    return pairs


def inliers(first: Fingerprint, second: Fingerprint, mirrored: bool) -> int:
    """Matches between the pictures (the second mirrored) that one similarity transform explains, 0 when
    that transform shrinks or grows the picture beyond SCALES (matches piled on one point). Below
    MIN_INLIERS ratio-tested matches no transform is fitted and their number, an upper bound, is returned."""
    points, descriptors = first.side(False)
    other_points, other_descriptors = second.side(mirrored)
    if len(descriptors) < 2 or len(other_descriptors) < 2:
        return 0
    if not hasattr(_local, "matcher"):
        _local.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    matches = [pair[0] for pair in _local.matcher.knnMatch(descriptors, other_descriptors, k=2)
               if len(pair) == 2 and pair[0].distance < RATIO * pair[1].distance]
    if len(matches) < MIN_INLIERS:
        return len(matches)
    transform, kept = cv2.estimateAffinePartial2D(points[[m.queryIdx for m in matches]],
                                                  other_points[[m.trainIdx for m in matches]],
                                                  method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION)
    if transform is None or not SCALES[0] <= np.hypot(transform[0, 0], transform[1, 0]) <= SCALES[1]:
        return 0
    return int(kept.sum())


def confirmed_pairs(fingerprints: list, min_inliers: int = MIN_INLIERS, store=None, digests=None) -> list:
    """(i, j) of the candidates() whose keypoints one similarity transform maps (inliers()), checked on every
    core (OpenCV releases the GIL). With a store (and the files' digests) each pair's count is kept by the two
    files' contents, so a later run checks only the pairs new files bring."""

    def count(pair):
        i, j, mirrored = pair
        key = f"{digests[i]}-{digests[j]}-{int(mirrored)}" if store is not None else None
        stored = store.get("inliers", key) if key else None
        if stored is not None:
            return int(stored)
        found = inliers(fingerprints[i], fingerprints[j], mirrored)
        if key:
            store.put("inliers", key, np.array(found, np.int32))
        return found

    pairs = sorted(candidates(fingerprints))
    confirmed = set()
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool, \
            console.progress(len(pairs), "pair", PROGRESS_FROM["pair"]) as progress:
        for (i, j, _), found in zip(pairs, pool.map(count, pairs)):
            if found >= min_inliers:
                confirmed.add((i, j))
            progress.update(1)
    return sorted(confirmed)


def groups(fingerprints, max_distance: int = THRESHOLD, min_inliers: int = MIN_INLIERS, store=None,
           digests=None) -> list:
    """A group id per item: the index of the first item of its group of near copies.

    Items whose hashes are at most max_distance apart, or whose keypoints confirm a re-framed copy
    (confirmed_pairs), share a group, and so, transitively, do their own near copies. An item without a
    fingerprint (None: undecodable) is a group of its own. The ids depend only on the order and the
    fingerprints, so a split made from them is the same on every run. store, digests: see confirmed_pairs.
    """
    parent = list(range(len(fingerprints)))

    def root(item):
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    present = [i for i, found in enumerate(fingerprints) if found is not None]
    if present:
        hashes = np.stack([fingerprints[i].hashes for i in present])
        confirmed = confirmed_pairs([fingerprints[i] for i in present], min_inliers, store,
                                    [digests[i] for i in present] if store is not None else None)
        for i, j in itertools.chain(close_pairs(hashes, max_distance), confirmed):
            first, second = root(present[i]), root(present[j])
            parent[max(first, second)] = min(first, second)  # the smaller index stays the root: the group id
    return [root(item) for item in range(len(fingerprints))]


def members(groups) -> list:
    """The items of each group (one id per item, as groups() gives), as index lists in item order; the groups
    in the order of their first item."""
    indices = {}
    for index, group in enumerate(groups):
        indices.setdefault(group, []).append(index)
    return list(indices.values())
