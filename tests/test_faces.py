"""--faces: the largest face is cropped in the shared preprocessing, the whole image kept when there is none."""
import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from happysad import classifier, data, evaluate, faces, images, predict, record, sample, train
from conftest import PARTITIONS

pytestmark = pytest.mark.slow  # whole module: its fixtures train or start a server (tens of seconds)

FACE_BOX = (190, 120, 110, 140)  # x, y, width, height of the drawn face in a 360 px picture


def draw_face(size=360, box=FACE_BOX, seed=0) -> np.ndarray:
    """An RGB picture with one face the Haar cascade finds: a skin-coloured oval with dark brows, eyes and
    mouth, softened by a blur (checked by hand for a range of positions, sizes and backgrounds)."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = rng.uniform(40, 120, 3)
    x, y, w, h = box
    cx = x + w / 2

    def oval(cx, cy, half_w, half_h, rgb):
        cv2.ellipse(image, (int(cx), int(cy)), (int(half_w), int(half_h)), 0, 0, 360, rgb, -1)

    oval(cx, y + h / 2, w / 2, h / 2, (220, 190, 170))
    for side in (-1, 1):
        oval(cx + side * w * 0.22, y + h * 0.29, w * 0.14, h * 0.025, (60, 55, 50))
        oval(cx + side * w * 0.22, y + h * 0.38, w * 0.11, h * 0.05, (40, 35, 35))
    oval(cx, y + h * 0.62, w * 0.08, h * 0.03, (140, 120, 110))
    oval(cx, y + h * 0.76, w * 0.2, h * 0.04, (110, 60, 60))
    return np.clip(cv2.GaussianBlur(image, (0, 0), 2), 0, 255).astype(np.uint8)


def no_face(size=300, seed=0) -> np.ndarray:
    coarse = np.random.default_rng(seed).uniform(0, 255, (6, 6, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def write_png(path, rgb):
    cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def overlap(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.parametrize("box", [FACE_BOX, (20, 30, 90, 115), (100, 100, 160, 200)])
def test_the_drawn_face_is_found_where_it_was_drawn(box):
    found = faces.largest_face(draw_face(box=box))
    assert found is not None
    assert overlap(found, box) > 0.4


def test_crop_keeps_the_face_with_a_margin_and_nothing_far_from_it():
    picture = draw_face()
    x, y, w, h = faces.largest_face(picture)
    cropped = faces.crop(picture)
    pad_x, pad_y = int(w * faces.MARGIN), int(h * faces.MARGIN)
    top, left = max(0, y - pad_y), max(0, x - pad_x)
    np.testing.assert_array_equal(cropped, picture[top:y + h + pad_y, left:x + w + pad_x])
    assert left > 100 and cropped.size < picture.size / 2  # the empty left side of the picture is gone


def test_without_a_face_the_whole_image_is_kept():
    picture = no_face()
    assert faces.largest_face(picture) is None
    np.testing.assert_array_equal(faces.crop(picture), picture)


def test_the_shared_preprocessing_crops_only_when_asked(tmp_path):
    face_file = write_png(tmp_path / "face.png", draw_face())
    expected = tf.image.resize(faces.crop(draw_face()), (32, 32), method="bilinear") / 255.0
    np.testing.assert_allclose(images.Preprocessing(32, faces=True).load(str(face_file)), expected, atol=1e-6)
    assert np.abs(images.Preprocessing(32, faces=False).load(str(face_file)) - expected).max() > 0.1

    plain_file = write_png(tmp_path / "plain.png", no_face())
    np.testing.assert_array_equal(images.Preprocessing(32, faces=True).load(str(plain_file)),
                                  images.Preprocessing(32, faces=False).load(str(plain_file)))


@pytest.fixture(scope="module")
def faces_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces-model")
    sample.write_faces(root / "data", per_class=10, size=64, seed=3)
    model_path = root / "models" / "happysad.h5"
    train.main(["--data", str(root / "data"), "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                "--faces", "--model", str(model_path), "--logdir", str(root / "logs"), "--run-name", "faces", *PARTITIONS])
    return model_path


def test_a_faces_model_records_it_and_predict_serve_and_evaluate_crop_the_same_way(faces_model, tmp_path, capsys):
    assert record.read(faces_model).preprocessing == images.Preprocessing(32, faces=True)
    model = classifier.load(faces_model)
    face_file = write_png(tmp_path / "face.png", draw_face())
    cropped = images.Preprocessing(32, faces=True).load(str(face_file)).numpy()
    np.testing.assert_array_equal(model.load_image(face_file), cropped)
    np.testing.assert_array_equal(model.decode(face_file.read_bytes()), cropped)  # what serve calls

    predict.main([str(face_file), "--model", str(faces_model), "--json"])
    row = json.loads(capsys.readouterr().out)
    p_second = float(model.network(cropped[None], training=False).numpy().reshape(-1)[0])
    assert row["probabilities"][model.class_names[1]] == pytest.approx(p_second, abs=1e-5)
    scores = evaluate.score(model, data.Files([str(face_file)], [1]), batch_size=4)  # what evaluate scores
    assert scores.probabilities[0, 1] == pytest.approx(p_second, abs=1e-5)
