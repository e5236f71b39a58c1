"""happysad.sample: generated faces, and the broken files happysad.clean must handle."""
import hashlib
import warnings

import cv2
import numpy as np
import pytest
import tensorflow as tf

from happysad import images, sample

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import imghdr


def digests(written: dict) -> dict:
    return {label: [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
            for label, paths in written.items()}


def test_same_seed_gives_the_same_files_and_another_seed_other_files(tmp_path):
    first = digests(sample.write_faces(tmp_path / "a", per_class=3, size=48, seed=3))
    again = digests(sample.write_faces(tmp_path / "b", per_class=3, size=48, seed=3))
    other = digests(sample.write_faces(tmp_path / "c", per_class=3, size=48, seed=4))
    more_classes = digests(sample.write_faces(tmp_path / "d", per_class=3, size=48, seed=3,
                                               classes=("happy", "sad", "neutral")))
    assert first == again
    assert not set(first["happy"] + first["sad"]) & set(other["happy"] + other["sad"])
    assert more_classes["happy"] == first["happy"] and more_classes["sad"] == first["sad"]


def test_n_distinct_faces_per_class_at_the_requested_size(tmp_path):
    classes = ("happy", "sad", "neutral", "surprised")
    written = sample.write_faces(tmp_path, per_class=5, size=72, seed=0, classes=classes)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(classes)
    for label, paths in written.items():
        assert len(paths) == 5
        assert sorted(paths) == sorted((tmp_path / label).iterdir())
        for path in paths:
            assert path.read_bytes()[:3] == b"\xff\xd8\xff"
            assert cv2.imread(str(path)).shape == (72, 72, 3)
    all_digests = sum(digests(written).values(), [])
    assert len(set(all_digests)) == len(all_digests) == 20


def test_broken_files_are_what_they_claim(tmp_path):
    broken = sample.write_broken_files(tmp_path, seed=1, size=64)
    assert set(broken) == {"corrupt", "empty", "not-image", "mis-extended", "too-small", "duplicate",
                           "label-conflict", "keep"}
    by_name = {path.name: path for paths in broken.values() for path in paths}

    (truncated,) = broken["corrupt"]
    assert truncated.read_bytes()[:3] == b"\xff\xd8\xff"
    with pytest.raises(tf.errors.InvalidArgumentError):
        images.Preprocessing(32).load(str(truncated))
    assert broken["empty"][0].stat().st_size == 0
    assert cv2.imdecode(np.frombuffer(broken["not-image"][0].read_bytes(), np.uint8), cv2.IMREAD_COLOR) is None
    assert imghdr.what(by_name["png-named.jpg"]) == "png"
    assert imghdr.what(by_name["face.webp"]) == "webp"
    assert imghdr.what(by_name["face.tiff"]) == "tiff"
    assert by_name["jpeg-without-extension"].read_bytes()[:3] == b"\xff\xd8\xff"
    assert cv2.imread(str(broken["too-small"][0])).shape[:2] == (8, 8)
    assert broken["duplicate"][0].read_bytes() == by_name["copy-a.jpg"].read_bytes()
    happy, sad = broken["label-conflict"]
    assert happy.parent.name != sad.parent.name and happy.read_bytes() == sad.read_bytes()

    # The valid-but-odd files decode with the training decoder; imghdr does not know the three JPEGs.
    for path in broken["keep"]:
        assert images.Preprocessing(32).load(str(path)).shape == (32, 32, 3)
    for name, marker in (("adobe-app14-first.jpg", 0xEE), ("icc-profile-first.jpg", 0xE2),
                         ("comment-first.jpg", 0xFE)):
        assert by_name[name].read_bytes()[:4] == bytes([0xFF, 0xD8, 0xFF, marker])
        assert imghdr.what(by_name[name]) is None
    assert cv2.imread(str(by_name["grayscale.png"]), cv2.IMREAD_UNCHANGED).ndim == 2
    assert cv2.imread(str(by_name["16-bit.png"]), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_cli_writes_the_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    sample.main([str(out), "--per-class", "3", "--size", "40", "--broken", "--classes", "happy", "sad", "meh"])
    assert len(list((out / "meh").iterdir())) == 3
    assert (out / "happy" / "truncated.jpg").exists() and (out / "sad" / "face.webp").exists()
    before = sorted(p.name for p in (out / "happy").iterdir())

    for argv in ([str(out)], [str(tmp_path / "x"), "--per-class", "0"], [str(tmp_path / "x"), "--size", "8"]):
        with pytest.raises(SystemExit) as exit_info:
            sample.main(argv)
        assert exit_info.value.code == 2
        error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(error_lines) == 1
    assert sorted(p.name for p in (out / "happy").iterdir()) == before
