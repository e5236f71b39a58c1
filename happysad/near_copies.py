"""Near copies: the same photo resized, re-encoded, lightly cropped or brightened, found by a perceptual hash.

Web-scraped class folders hold such copies. Under two labels they teach the model two answers for one picture
(happysad.clean quarantines them); under one label they are harmless to training, but a split that puts one
copy in training and another in test lets the model recall the test image instead of generalising, so the
split keeps each group of copies in one partition (happysad.data.split).

A fingerprint is a perceptual hash (pHash) of the image and of two centre crops of it (4% and 8% off every
side): grayscale, 64x64 INTER_AREA thumbnail, 2-D DCT, and one bit per coefficient of the 16x16 lowest
frequencies: above their median or not. Two images are as far apart as the closest pair of their hashes (the
number of bits that differ), so a copy with 5-8% cut off its borders still meets the original at a crop.

Why this hash, measured on the photos described at THRESHOLD, each variant at its best threshold:
  - the difference hash (dHash: is each thumbnail pixel brighter than its neighbour), without the crops, at
    any size from 8x8 to 16x16, with or without vertical differences, finds most cropped copies only where it
    also joins hundreds of different pictures; with the crops, finding 92% of them joins 20 pairs of different
    pictures, because the flat black or white backgrounds of icons and cut-outs give all of them the same
    "not brighter" bits. pHash compares each coefficient with the median: as many ones as zeros, whatever
    the background.
  - the classic 64-bit pHash (8x8 frequencies) finds the same 6 real copies but also joins 3 pairs of
    different photos, and 4 pairs of different faces among the 300 of happysad.sample the tests train on
    (48 px): too coarse for pictures that are all one oval on a plain background. The 256-bit one joins 1
    pair of photos and no faces: the closest two different faces are 56 bits apart.
  - the price of the finer hash: a copy cut on one side only shifts the picture, which the centred crops do
    not follow, and is found 7% of the time (41% with 8x8).

No hash tells a smiling drawing from the frowning version of the same emoji template: the mouth is too small a
detail. Such pairs group like copies, which is why clean moves conflicts into a quarantine that `--restore`
undoes and names the other copies in each finding.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from happysad import files, images
from happysad.runtime import tf

THUMBNAIL = 64  # pixels of the square the DCT runs on
SQUARE = 2 * THUMBNAIL  # the picture is first reduced to this square, then cropped
HASH_SIZE = 16  # the 16x16 lowest frequencies: 256 bits per hash
CROPS = (0.0, 0.04, 0.08)  # fraction cut off every side before hashing, one hash each
FAMILY, VERSION = "near-copies", "v1"  # stored fingerprints: VERSION changes whenever fingerprint() does
# Largest distance (differing bits of the closest pair of hashes) at which two images are near copies.
# Measured on happysad-web, 865 web-scraped photos (373,680 pairs, 7 of them byte-identical files). Distances
# are even but for rare ties (every hash has 128 ones).
#   - all pairs: 14 are <= 48 apart, the next at 50, 52, 64, 68...; 0.1% are <= 94, 1% <= 102, half <= 118.
#   - synthetic copies of 216 of the photos, found at <= 48: resized to half and re-encoded as JPEG quality 60:
#     100% (all <= 12); 5-8% cut off each side (independently) and brightened by +30: 96% (88% at <= 40, 99%
#     at <= 56); 2.5-4% off each side: 100% (all <= 34).
#   - real pairs, each looked at side by side: 12 copies that are not byte-identical (other encodings, an added
#     watermark or band, crops); at <= 48, 6 of them and 1 false match (a happy and a sad wallpaper of one
#     emoji template); at <= 52 to 60, 3 (also a smiling and a frowning smiley, two crying emoji). The other 6
#     copies are 68-116 apart, with 10% or more cut off or a band added: beyond any threshold of a hash.
THRESHOLD = 48


def fingerprint(pixels: np.ndarray) -> np.ndarray:
    """One 256-bit pHash per crop in CROPS (np.uint64, shape (3, 4)) of a uint8 RGB image (height, width, 3)."""
    gray = cv2.cvtColor(np.asarray(pixels, np.uint8), cv2.COLOR_RGB2GRAY)
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
    found = [store.get("fingerprint", digest) for digest in digests] if store is not None else [None] * len(paths)
    missing = [i for i, fingerprint in enumerate(found) if fingerprint is None]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for i, fingerprint in zip(missing, pool.map(file_fingerprint, [paths[i] for i in missing])):
            found[i] = fingerprint
            if store is not None and fingerprint is not None:
                store.put("fingerprint", digests[i], fingerprint)
    return found


def distance(first: np.ndarray, second: np.ndarray) -> int:
    """Bits that differ between the closest pair of hashes of two fingerprints."""
    return int(np.bitwise_count(first[:, None] ^ second[None, :]).sum(axis=-1).min())


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


def groups(fingerprints, max_distance: int = THRESHOLD) -> list:
    """A group id per item: the index of the first item of its group of near copies.

    Items at most max_distance apart share a group, and so, transitively, do their own near copies. An item
    without a fingerprint (None: undecodable) is a group of its own. The ids depend only on the order and the
    fingerprints, so a split made from them is the same on every run.
    """
    parent = list(range(len(fingerprints)))

    def root(item):
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    present = [i for i, found in enumerate(fingerprints) if found is not None]
    if present:
        hashes = np.stack([fingerprints[i] for i in present])
        for i, j in close_pairs(hashes, max_distance):
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
