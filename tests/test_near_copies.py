"""Near copies: a photo resized, re-encoded, cropped or brightened is found; different pictures are not."""
import cv2
import numpy as np
import pytest

from happysad import cache, images, near_copies, sample


def resized_copy(bgr: np.ndarray) -> bytes:
    """Half the size, re-encoded as a JPEG of quality 60."""
    height, width = bgr.shape[:2]
    small = cv2.resize(bgr, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 60])[1].tobytes()


def cropped_copy(bgr: np.ndarray, fraction: float) -> bytes:
    """`fraction` cut off every side, brightened by 30, saved as a PNG."""
    height, width = bgr.shape[:2]
    top, side = round(height * fraction), round(width * fraction)
    brighter = np.clip(bgr[top:height - top, side:width - side].astype(int) + 30, 0, 255).astype(np.uint8)
    return cv2.imencode(".png", brighter)[1].tobytes()


def decoded_fingerprint(encoded: bytes) -> np.ndarray:
    return near_copies.fingerprint(images.decode_pixels(encoded).numpy())


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """24 generated faces at 128 px: paths and their fingerprints."""
    written = sample.write_faces(tmp_path_factory.mktemp("faces"), per_class=12, size=128, seed=3)
    paths = [path for paths in written.values() for path in paths]
    return paths, near_copies.load_fingerprints(paths)


def test_resized_and_cropped_brightened_copies_are_near(faces):
    for path, fingerprint in zip(*faces):
        bgr = cv2.imread(str(path))
        for copy in (resized_copy(bgr), cropped_copy(bgr, 0.05), cropped_copy(bgr, 0.065), cropped_copy(bgr, 0.08)):
            assert near_copies.distance(decoded_fingerprint(copy), fingerprint) <= near_copies.THRESHOLD, path


def test_different_generated_faces_are_not_grouped(faces):
    paths, fingerprints = faces
    assert near_copies.groups(fingerprints) == list(range(len(paths)))
    # Not a near miss either: the closest two of these faces are more than 1.5 times the threshold apart.
    closest = min(near_copies.distance(a, b) for i, a in enumerate(fingerprints) for b in fingerprints[i + 1:])
    assert closest > 1.5 * near_copies.THRESHOLD


def test_fingerprint_is_what_training_decodes_and_undecodable_files_have_none(faces, tmp_path):
    paths, fingerprints = faces
    (tmp_path / "truncated.jpg").write_bytes(paths[0].read_bytes()[:100])
    loaded = near_copies.load_fingerprints([paths[0], tmp_path / "truncated.jpg", paths[1]])
    assert loaded[1] is None
    assert np.array_equal(loaded[0], decoded_fingerprint(paths[0].read_bytes()))
    assert np.array_equal(loaded[2], fingerprints[1])
    assert fingerprints[0].shape == (len(near_copies.CROPS), near_copies.HASH_SIZE**2 // 64)
    assert fingerprints[0].dtype == np.uint64


def flipped(fingerprint: np.ndarray, bits: int, word: int) -> np.ndarray:
    """The fingerprint with the lowest `bits` bits of one 64-bit word of every hash flipped."""
    copy = fingerprint.copy()
    copy[:, word] ^= np.uint64((1 << bits) - 1)
    return copy


def test_groups_chain_copies_of_copies_and_are_named_by_their_first_member():
    base = np.random.default_rng(0).integers(0, 2**63, (len(near_copies.CROPS), 4), dtype=np.uint64)
    other = ~base
    assert near_copies.distance(base, other) > 2 * near_copies.THRESHOLD
    step = near_copies.THRESHOLD  # each copy differs from the one before by exactly the threshold
    chain = [base, flipped(base, step, word=0), flipped(flipped(base, step, word=0), step, word=1)]
    assert near_copies.distance(chain[0], chain[2]) > near_copies.THRESHOLD  # only joined through chain[1]
    alone = flipped(base, step + 1, word=2)
    assert near_copies.distance(base, alone) == step + 1

    fingerprints = [other, chain[2], None, chain[0], alone, chain[1], other]
    assert near_copies.groups(fingerprints) == [0, 1, 2, 1, 4, 1, 0]
    assert near_copies.groups(fingerprints, max_distance=0) == [0, 1, 2, 3, 4, 5, 0]
    assert near_copies.groups([]) == []


def test_distance_is_the_closest_pair_of_crops():
    first = np.array([[0, 0], [0xFF, 0x1], [0xFFFF, 0]], np.uint64)
    second = np.array([[0xFFFF_FFFF, 0], [0xFFFF_FFFF, 0], [0x7F, 0]], np.uint64)
    assert near_copies.distance(first, second) == 2  # crop 1 against crop 2: 0xFF against 0x7F, 0x1 against 0
    assert near_copies.distance(first, first) == 0


def test_stored_fingerprints_are_found_by_content_without_decoding_again(tmp_path, monkeypatch):
    paths = []
    for index in range(3):
        face = sample.draw_face(np.random.default_rng(index), "happy", 0, 64)
        paths.append(str(tmp_path / f"face{index}.png"))
        cv2.imwrite(paths[-1], face)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    paths.append(str(tmp_path / "broken.jpg"))
    computed = near_copies.load_fingerprints(paths, cache.ArrayStore(near_copies.FAMILY, near_copies.VERSION,
                                                                    tmp_path / "store"))
    renamed = tmp_path / "renamed.png"
    renamed.write_bytes((tmp_path / "face0.png").read_bytes())
    decoded = []
    original = near_copies.file_fingerprint
    monkeypatch.setattr(near_copies, "file_fingerprint", lambda path: decoded.append(path) or original(path))
    store = cache.ArrayStore(near_copies.FAMILY, near_copies.VERSION, tmp_path / "store")  # a later run
    again = near_copies.load_fingerprints([*paths, str(renamed)], store)
    assert decoded == [paths[-1]]  # only the file without a fingerprint to store: it is undecodable
    assert again[3] is None and computed[3] is None
    for first, second in zip([*computed[:3], computed[0]], [*again[:3], again[4]]):
        np.testing.assert_array_equal(first, second)
