"""export: every format loads through classifier.load (so predict and serve run it) and agrees with the .h5.

Tolerances, on probabilities of the same decoded images: 1e-5 for float32 exports (.keras, SavedModel,
TFLite float32), 2e-2 for quantized TFLite (dynamic-range int8 weights, float16 weights); quantized labels must
match wherever the .h5's probability is not within that tolerance of the decision threshold.
"""
import hashlib
import json
import shutil
import warnings

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from happysad import classifier, export, files, images, predict, record

pytestmark = pytest.mark.slow  # whole module: its fixtures train or start a server (tens of seconds)

FLOAT_TOLERANCE = 1e-5
QUANTIZED_TOLERANCE = 2e-2
FORMATS = {"keras": ("keras", "none"), "savedmodel": ("savedmodel", "none"), "tflite": ("tflite", "none"),
           "tflite-dynamic": ("tflite", "dynamic"), "tflite-float16": ("tflite", "float16")}


@pytest.fixture(scope="module")
def source(trained, tmp_path_factory):
    """A copy of the trained model and its record, so exports can go beside it under their default names."""
    folder = tmp_path_factory.mktemp("exports")
    for path in (trained["model"], record.sidecar_path(trained["model"])):
        shutil.copy(path, folder)
    return folder / trained["model"].name


@pytest.fixture(scope="module")
def exports(source):
    paths = {}
    for tag, (fmt, quantize) in FORMATS.items():
        export.main(["--format", fmt, "--quantize", quantize, "--model", str(source)])
        paths[tag] = export.default_out(source, fmt, quantize)
    return paths


@pytest.fixture(scope="module")
def test_images(trained):
    reference = classifier.load(trained["model"])
    paths = [trained["data"] / p for p in reference.record.split["test"]]
    return paths, np.stack([reference.load_image(p) for p in paths]), reference


def test_default_names_never_share_the_source_record(source, exports):
    names = {path.name for path in exports.values()}
    assert names == {"happysad-keras.keras", "happysad-savedmodel", "happysad-tflite.tflite",
                     "happysad-tflite-dynamic.tflite", "happysad-tflite-float16.tflite"}
    sidecars = {record.sidecar_path(path) for path in exports.values()} | {record.sidecar_path(source)}
    assert len(sidecars) == len(exports) + 1 and all(path.exists() for path in sidecars)
    assert record.read(source).model_file == "happysad.h5"
    assert record.read(source).model_sha256 == files.sha256(source)


@pytest.mark.parametrize("tag", list(FORMATS))
def test_export_gives_the_same_labels_and_probabilities(exports, test_images, tag):
    _, pixels, reference = test_images
    exported = classifier.load(exports[tag])
    assert exported.class_names == reference.class_names and exported.preprocessing == reference.preprocessing
    want, got = reference.probabilities(pixels), exported.probabilities(pixels)
    tolerance = FLOAT_TOLERANCE if FORMATS[tag][1] == "none" else QUANTIZED_TOLERANCE
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)
    clear = np.abs(want[:, 1] - reference.record.threshold) > tolerance
    assert clear.sum() >= len(pixels) // 2
    labels = [p.label for p in reference.predict(pixels)], [p.label for p in exported.predict(pixels)]
    assert [a for a, c in zip(labels[0], clear) if c] == [b for b, c in zip(labels[1], clear) if c]


@pytest.mark.parametrize("tag", list(FORMATS))
def test_record_beside_the_export_names_it(source, exports, tag):
    path = exports[tag]
    copy, original = record.read(path), record.read(source)
    assert copy.model_file == path.name
    if path.is_file():
        assert copy.model_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        assert copy.model_sha256 == export.sha256(path) != export.sha256(exports["keras"])
    for field in ("class_names", "preprocessing", "threshold", "split", "metrics", "seed"):
        assert getattr(copy, field) == getattr(original, field)


def test_predict_runs_tflite_and_savedmodel_exports(source, exports, test_images, capsys):
    paths, _, _ = test_images
    rows = {}
    for model in (exports["tflite"], exports["savedmodel"]):
        predict.main([*map(str, paths[:6]), "--model", str(model), "--json"])
        captured = capsys.readouterr()
        rows[model.name] = [json.loads(line) for line in captured.out.splitlines()]
        assert captured.err.count("no image is marked \"fits no class\"") == 1  # said, not silently dropped
    predict.main([*map(str, paths[:6]), "--model", str(source), "--json"])
    captured = capsys.readouterr()
    want = [json.loads(line) for line in captured.out.splitlines()]
    assert "fits no class" not in captured.err
    for got in rows.values():
        assert [r["label"] for r in got] == [r["label"] for r in want]
        assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in want], abs=2e-6)


def test_exports_take_raw_pixels_and_give_predicts_probabilities(exports, test_images, tmp_path):
    """What an app does with an export alone: decode a picture to uint8 RGB and feed it. The SavedModel takes
    it at its own size (here pictures wider than tall, larger than the model's input), TFLite at the model's
    size; both must give the probability predict gives for the file."""
    paths, _, reference = test_images
    size = reference.preprocessing.image_size
    odd = []
    for index, path in enumerate(paths[:6]):
        picture = cv2.resize(cv2.imread(str(path)), (size * 2 + 7 * index, size + 5 * index))
        odd.append(tmp_path / f"odd{index}.png")
        cv2.imwrite(str(odd[-1]), picture)
    saved = tf.saved_model.load(str(exports["savedmodel"])).signatures["serving_default"]
    tflite = classifier.load_network(exports["tflite"])
    assert tflite.input_dtype == np.uint8
    for pictures, run in ((odd, lambda pixels: next(iter(saved(pixels=tf.constant(pixels)).values()))),
                          (paths[:6], lambda pixels: tflite.signature(pixels=pixels)[tflite.output_name])):
        for path in pictures:
            pixels = tf.io.decode_image(open(path, "rb").read(), channels=3).numpy()
            assert pixels.dtype == np.uint8 and (pixels.shape[:2] != (size, size)) == (pictures is odd)
            got = float(np.asarray(run(pixels[None])).reshape(-1)[-1])
            want = reference.probabilities(reference.load_image(path)[None])[0, 1]
            assert got == pytest.approx(want, abs=1e-5), path


def test_keras_export_of_an_h5_model_loads_with_keras_and_predicts_identically(source, exports, test_images):
    """The Keras 3 trap: a .keras written from a model that went through the .h5 saver can carry a broken
    optimizer. The export is read from disk without one, so plain keras.models.load_model is clean."""
    _, pixels, _ = test_images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(exports["keras"])
    assert not [w for w in caught if "optimizer" in str(w.message).lower()]
    from_h5 = keras.models.load_model(source, compile=False)
    np.testing.assert_array_equal(np.asarray(loaded(pixels, training=False)),
                                  np.asarray(from_h5(pixels, training=False)))


def test_model_with_augmentation_and_built_in_preprocessing_exports_to_every_format(tmp_path):
    """Three classes (softmax), random augmentation (off at inference) and a backbone-style rescale to
    [-1, 1] inside the model, trained a step and saved to .h5 as train does: every export still agrees."""
    model = keras.Sequential([
        keras.Input((24, 24, 3), name="image"),
        keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1), keras.layers.RandomZoom(0.1),
        keras.layers.Rescaling(2.0, offset=-1.0),
        keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    pixels = (rng.integers(0, 256, (16, 24, 24, 3)) / 255).astype(np.float32)  # as decoded pictures are
    model.fit(pixels, rng.integers(0, 3, 16), epochs=1, verbose=0)
    path = tmp_path / "three.h5"
    record.save(model, path, record.Record(class_names=["a", "b", "c"], preprocessing=images.Preprocessing(24)))
    want = np.asarray(model(pixels, training=False))
    for fmt in ("keras", "savedmodel", "tflite"):
        export.main(["--format", fmt, "--model", str(path)])
        got = classifier.load(export.default_out(path, fmt)).probabilities(pixels)
        np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT_TOLERANCE)


def test_a_model_reading_the_face_beside_the_picture_takes_six_channels_of_raw_pixels(tmp_path, face_beside_network):
    network, rng = face_beside_network, np.random.default_rng(0)
    path = tmp_path / "beside.h5"
    record.save(network, path, record.Record(class_names=["happy", "sad"],
                                             preprocessing=images.Preprocessing(32, face_beside=True)))
    pixels = rng.integers(0, 256, (4, 32, 32, 6)).astype(np.uint8)  # the picture's RGB, then the face's
    want = np.asarray(network(pixels / 255.0, training=False))
    for fmt in ("savedmodel", "tflite"):
        export.main(["--format", fmt, "--model", str(path)])
        raw = classifier.load_network(export.default_out(path, fmt))
        assert raw.input_dtype == np.uint8
        got = np.asarray(raw.signature(**{raw.input_name: pixels})[raw.output_name])
        np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT_TOLERANCE)


def export_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export.main(args)
    return str(exit_info.value.code) + capsys.readouterr().err


def test_refusals_leave_everything_as_it_was(source, exports, tmp_path, capsys):
    before = record.sidecar_path(source).read_text()
    message = export_error(["--format", "keras", "--model", str(source), "--out", str(source.with_suffix(".keras"))],
                           capsys)
    assert message.startswith("happysad.export: error:") and "share the record" in message
    assert not source.with_suffix(".keras").exists() and record.sidecar_path(source).read_text() == before
    assert "--quantize applies to --format tflite only" in export_error(
        ["--format", "keras", "--quantize", "dynamic", "--model", str(source)], capsys)
    assert "already an export" in export_error(
        ["--format", "keras", "--model", str(exports["tflite"]), "--out", str(tmp_path / "x.keras")], capsys)
    assert "writes a .tflite file" in export_error(
        ["--format", "tflite", "--model", str(source), "--out", str(tmp_path / "x.keras")], capsys)
    keep = tmp_path / "photos"
    keep.mkdir()
    (keep / "holiday.jpg").write_bytes(b"precious")
    assert "not a SavedModel folder" in export_error(
        ["--format", "savedmodel", "--model", str(source), "--out", str(keep)], capsys)
    assert [p.name for p in keep.iterdir()] == ["holiday.jpg"]
    assert "not found" in export_error(["--format", "keras", "--model", str(tmp_path / "none.h5")], capsys)


def test_exporting_again_replaces_a_savedmodel_cleanly(source, exports, test_images):
    folder = source.parent
    before = sorted(p.name for p in folder.iterdir())
    export.main(["--format", "savedmodel", "--model", str(source)])
    assert sorted(p.name for p in folder.iterdir()) == before  # no temporary or old copies left behind
    assert record.read(exports["savedmodel"]).model_sha256 == export.sha256(exports["savedmodel"])
    _, pixels, reference = test_images
    np.testing.assert_allclose(classifier.load(exports["savedmodel"]).probabilities(pixels),
                               reference.probabilities(pixels), rtol=0, atol=FLOAT_TOLERANCE)
