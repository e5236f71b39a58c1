"""The pretrained path: backbone features computed once, stored by content, the head cross-validated and
trained on them (happysad.crossval), and written into one saved Keras network.

A MobileNet (v1, width 0.25) with random weights saved to a file stands in for ImageNet weights: what is
tested is the plumbing (store, keys, the head inside the saved model), not what ImageNet features are worth.
Real ImageNet weights from ../shared/weights are used where that folder is present.
"""
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_WEIGHTS

from happysad import (cache, calibration, classifier, evaluate, faces, features, images, marks, model as models,
                      predict, record, sample, train)
from happysad.config import TrainConfig
from happysad.files import sha256_each

SIZE = 32


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """48 generated faces whose class also shows in their colour (sad ones tinted blue): the stand-in
    backbone's random features cannot see a mouth's curve, but they see a colour, so the heads learn
    something and calibration keeps their probabilities apart."""
    folder = tmp_path_factory.mktemp("features") / "data"
    sample.write_faces(folder, per_class=24, size=SIZE, seed=11)
    for path in (folder / "sad").iterdir():
        picture = cv2.imread(str(path)).astype(np.int16)
        picture[..., 0] += 70
        cv2.imwrite(str(path), np.clip(picture, 0, 255).astype(np.uint8))
    return folder


def run(folder, weights, out, *extra, arch="mobilenet025", folds=3):
    """train on folder; folds None for fine-tuning, which trains on partitions."""
    return train.train(train.parse_args([
        "--data", str(folder), "--arch", arch, "--weights", str(weights), "--image-size", str(SIZE),
        *(["--folds", str(folds)] if folds else []), "--model", str(out / "m.h5"), "--logdir", str(out / "logs"),
        "--cache", f"disk:{out.parent / 'cache'}", *extra]))


def stored_vectors(store: cache.ArrayStore, paths, view="original") -> np.ndarray:
    return np.stack([store.get(view, digest) for digest in sha256_each(paths)])


def head_probabilities(result) -> np.ndarray:
    """What the scikit-learn head trained on every photo says about them, calibrated as the run chose."""
    return calibration.apply(result["scaling"], result["head"].predict_proba(result["features"]))


def test_saved_model_gives_the_scikit_learn_heads_probability(small_dir, weights_file, tmp_path):
    result = run(small_dir, weights_file, tmp_path / "a")
    saved = result["record"]
    assert saved.split["validation"] == saved.split["test"] == [] and len(saved.split["train"]) == 48
    expected = head_probabilities(result)[:, 1]
    assert np.ptp(expected) > 1e-3  # the images get different probabilities: the features carry them
    model = classifier.load(tmp_path / "a" / "m.h5")
    pixels = np.stack([model.load_image(small_dir / path) for path in saved.split["train"]])
    np.testing.assert_allclose(model.probabilities(pixels)[:, 1], expected, atol=1e-5)
    assert saved.hyperparameters["head"] == "logistic regression"
    assert saved.hyperparameters["penalty"] == result["measurement"].final.penalty
    read_back = record.read(tmp_path / "a" / "m.h5").config  # every setting of the run, saved with the model
    assert read_back["folds"] == 3 and read_back["image_size"] == SIZE and read_back["arch"] == "mobilenet025"
    assert set(read_back) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_expression_network_with_face_crops_is_one_saved_network_with_the_heads_probability(
        small_dir, expression_file, tmp_path, capsys):
    result = run(small_dir, expression_file, tmp_path / "a", "--faces", arch=models.EXPRESSION)
    assert f"note: {marks.FACE_FEATURES_CAVEAT}" in capsys.readouterr().out
    assert result["features"].shape == (48, 8)  # the stand-in's last residual block, averaged
    model = classifier.load(tmp_path / "a" / "m.h5")
    assert model.record.preprocessing.faces
    pixels = np.stack([model.load_image(small_dir / path) for path in result["record"].split["train"]])
    np.testing.assert_allclose(model.probabilities(pixels), head_probabilities(result),
                               atol=1e-5)


def centre_face(rgb):
    """A stand-in face detector: the centre half of every picture is "the face" (generated faces are drawn, and
    the cascade finds few of them at 32 px), so the face crop always differs from the picture."""
    height, width = rgb.shape[:2]
    return width // 4, height // 4, width // 2, height // 2


def test_a_picture_backbone_beside_the_face_backbone_reads_the_picture_and_the_face(
        small_dir, stand_in_downloads, tmp_path, monkeypatch):
    monkeypatch.setattr(faces, "largest_face", centre_face)
    result = run(small_dir, "imagenet", tmp_path / "a", arch="mobilenet025+expression")
    model = classifier.load(tmp_path / "a" / "m.h5")
    assert model.record.preprocessing == images.Preprocessing(SIZE, face_beside=True)
    pixels = np.stack([model.load_image(small_dir / path) for path in result["record"].split["train"]])
    assert pixels.shape == (48, SIZE, SIZE, 6)
    # The stored features were computed by each backbone on its own view: the picture for MobileNet, the face
    # crop for the expression network, as --arch expression alone reads it (it crops the face by itself).
    alone = run(small_dir, "imagenet", tmp_path / "alone" / "b", arch=models.EXPRESSION)  # its own store
    assert alone["record"].preprocessing == images.Preprocessing(SIZE, faces=True)
    np.testing.assert_allclose(result["features"][:, -8:], alone["features"], atol=1e-6)
    # and the saved network routes each its channels: its probabilities are the head's on those features.
    np.testing.assert_allclose(model.probabilities(pixels), head_probabilities(result), atol=1e-5)
    swapped = np.concatenate([pixels[..., 3:], pixels[..., :3]], axis=-1)
    assert np.abs(model.probabilities(swapped) - head_probabilities(result)).max() > 1e-3
    # "Fits no class" measures MobileNet's 256 columns alone: the face network's cannot move it.
    assert model.record.domain["columns"] == [[0, 256]] and alone["record"].domain.get("columns") is None
    # evaluate and predict --explain read the six channels as every stage does.
    report = evaluate.evaluate(tmp_path / "a" / "m.h5", data_dir=small_dir, out=tmp_path / "report",
                               tensorboard=False)
    names = result["record"].class_names
    labels = np.array([names.index(Path(path).parts[0]) for path in result["record"].split["train"]])
    assert report["metrics"]["accuracy"] == pytest.approx(np.mean((head_probabilities(result)[:, 1] >= 0.5) == labels))
    predict.main([str(small_dir / path) for path in result["record"].split["train"][:2]]
                 + ["--model", str(tmp_path / "a" / "m.h5"), "--explain", str(tmp_path / "explained")])
    # Each heatmap: the picture, and the face crop beside it on the right.
    assert [cv2.imread(str(p)).shape for p in sorted((tmp_path / "explained").iterdir())] == [(SIZE, 2 * SIZE, 3)] * 2



@pytest.mark.slow
def test_mobilenet_on_the_face_joins_the_expression_network_in_one_pass_and_one_saved_network(
        small_dir, stand_in_downloads, tmp_path, monkeypatch):
    monkeypatch.setitem(models.BACKBONES, models.FACE_MOBILENET, dataclasses.replace(
        models.BACKBONES[models.FACE_MOBILENET], options=(("alpha", 0.25),)))  # the stand-in file's width
    searched = []
    monkeypatch.setattr(faces, "largest_face", lambda rgb: searched.append(rgb.shape) or centre_face(rgb))
    result = run(small_dir, "imagenet", tmp_path / "a", arch=f"mobilenet025+expression+{models.FACE_MOBILENET}")
    assert len(searched) == 48  # each face found once for both backbones that read it
    assert result["features"].shape == (48, 256 + 8 + 256)
    # MobileNet on the face gives what MobileNet gives for --faces, where every backbone reads the face.
    alone = run(small_dir, "imagenet", tmp_path / "alone" / "b", "--faces")
    np.testing.assert_allclose(result["features"][:, -256:], alone["features"], atol=1e-5)
    # Two MobileNets of the same layer names save and load as one network with the head's probabilities.
    model = classifier.load(tmp_path / "a" / "m.h5")
    assert {"mobilenet025_backbone", f"{models.FACE_MOBILENET}_backbone"} <= {layer.name for layer in model.network.layers}
    pixels = np.stack([model.load_image(small_dir / path) for path in result["record"].split["train"]])
    np.testing.assert_allclose(model.probabilities(pixels), head_probabilities(result), atol=1e-5)
    # "Fits no class" measures the picture's ImageNet features alone, not the face's.
    assert model.record.domain["columns"] == [[0, 256]]


def test_fits_no_class_measures_imagenet_features_of_the_picture_else_of_the_face():
    per_backbone = {"mobilenet": np.zeros((1, 4)), models.EXPRESSION: np.zeros((1, 2)),
                    models.FACE_MOBILENET: np.zeros((1, 4))}
    columns = features.domain_columns
    assert columns(("mobilenet", models.EXPRESSION, models.FACE_MOBILENET), per_backbone) == ((0, 4),)
    assert columns((models.FACE_MOBILENET, "mobilenet"), per_backbone) == ((4, 8),)
    assert columns((models.EXPRESSION, models.FACE_MOBILENET), per_backbone) == ((2, 6),)
    assert columns((models.EXPRESSION,), per_backbone) == ()  # no ImageNet backbone: all its features
    assert columns(("mobilenet",), per_backbone) == ()


def test_auto_tries_each_backbone_alone_and_every_combination():
    assert features.auto_candidates(("a", "b", "c")) == ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]

@pytest.mark.slow
def test_a_second_run_never_runs_the_backbone(small_dir, weights_file, tmp_path, monkeypatch):
    first = run(small_dir, weights_file, tmp_path / "first")
    calls = []
    monkeypatch.setattr(features, "compute", lambda *args, **kwargs: calls.append(args) or 1 / 0)
    second = run(small_dir, weights_file, tmp_path / "second")
    assert calls == []
    np.testing.assert_array_equal(first["features"], second["features"])
    assert second["record"].metrics["cross_validation"]["accuracy"] == \
        first["record"].metrics["cross_validation"]["accuracy"]


@pytest.mark.slow
def test_views_are_stored_for_training_images_only(small_dir, weights_file, tmp_path):
    result = run(small_dir, weights_file, tmp_path / "views", "--views", "4", "--fine-tune", "2",
                 "--fine-tune-epochs", "1", "--epochs", "2", folds=None)
    saved = result["record"]
    store = cache.ArrayStore(features.FAMILY, features.extractor_id("mobilenet025", str(weights_file), images.Preprocessing(SIZE)),
                           tmp_path / "cache")
    train_paths = [str(small_dir / p) for p in saved.split["train"]]
    test_paths = [str(small_dir / p) for p in saved.split["test"]]
    digests = sha256_each(test_paths)
    for view in features.VIEWS[4]:
        vectors = stored_vectors(store, train_paths, view)
        assert vectors.shape[0] == len(train_paths)
    original, flipped = stored_vectors(store, train_paths), stored_vectors(store, train_paths, "flip")
    assert np.abs(original - flipped).max() > 1e-4  # a mirrored picture is another input
    assert all(store.get("flip", digest) is None for digest in digests)


@pytest.mark.slow
def test_vectors_are_found_by_content_and_keyed_by_everything_they_depend_on(small_dir, weights_file, tmp_path):
    network = models.build("mobilenet025", 2, SIZE, weights=str(weights_file))
    extractor, _ = models.split_at_pool(network)
    paths = sorted(str(p) for p in (small_dir / "happy").iterdir())[:3]
    preprocessing = images.Preprocessing(SIZE)
    store = cache.ArrayStore(features.FAMILY, "k1", tmp_path / "cache")
    first = features.extract(extractor, paths, store, preprocessing)[0]
    np.testing.assert_allclose(first, features.compute(extractor, paths, preprocessing, "original"), atol=1e-6)
    renamed = tmp_path / "renamed.jpg"
    renamed.write_bytes(Path(paths[0]).read_bytes())
    again = features.extract(extractor, [str(renamed)], cache.ArrayStore(features.FAMILY, "k1", tmp_path / "cache"), preprocessing)[0]
    np.testing.assert_array_equal(again[0], first[0])  # read back, by content
    keys = {features.extractor_id(arch, str(weights_file), images.Preprocessing(size, faces))
            for arch in ("mobilenet", "mobilenet025") for size in (32, 64) for faces in (False, True)}
    assert len(keys) == 8
    other_weights = tmp_path / "other.weights.h5"
    other_weights.write_bytes(Path(weights_file).read_bytes() + b"\0")
    assert features.extractor_id("mobilenet025", str(other_weights), images.Preprocessing(SIZE)) != \
        features.extractor_id("mobilenet025", str(weights_file), images.Preprocessing(SIZE))


@pytest.mark.slow
def test_holdout_is_scored_with_the_threshold_chosen_by_cross_validation(small_dir, weights_file, tmp_path):
    result = run(small_dir, weights_file, tmp_path / "t", "--holdout", "0.25")
    saved = result["record"]
    assert len(saved.split["test"]) == 12 and not set(saved.split["test"]) & set(saved.split["train"])
    assert saved.metrics["test"]["count"] == 12 and saved.metrics["cross_validation"]["count"] == 36
    assert saved.metrics["test"]["threshold"] == saved.threshold == result["measurement"].final.threshold
    fixed = run(small_dir, weights_file, tmp_path / "fixed", "--threshold", "0.3")["record"]
    assert fixed.threshold == 0.3 and fixed.metrics["cross_validation"]["threshold"] == 0.3


@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5").exists(),
                    reason="needs ../shared/weights (ImageNet weights; not part of a user's clone)")
@pytest.mark.slow
def test_imagenet_mobilenet025_learns_the_sample_faces(tmp_path):
    folder = tmp_path / "data"
    sample.write_faces(folder, per_class=80, size=128, seed=3)
    result = train.train(train.parse_args([
        "--data", str(folder), "--arch", "mobilenet025", "--image-size", "128",
        "--weights", str(SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"), "--holdout", "0.25",
        "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--cache", "memory"]))
    measured = result["record"].metrics
    assert measured["test"]["count"] == 40 and measured["test"]["accuracy"] >= 0.7, measured["test"]  # chance 0.5
    assert measured["cross_validation"]["count"] == 120 and measured["cross_validation"]["accuracy"] >= 0.7


def test_recipe_fills_only_what_the_user_did_not_set():
    args = train.parse_args(["--arch", "mobilenet"])
    recipe = models.RECIPES["mobilenet"]
    assert (args.image_size, args.epochs, args.dropout, args.views) == \
        (recipe.image_size, recipe.epochs, recipe.dropout, recipe.views)
    args = train.parse_args(["--arch", "mobilenet", "--image-size", "160", "--fine-tune", "5", "--dropout", "0"])
    assert args.image_size == 160 and args.dropout == 0 and not args.cross_validate
    assert train.parse_args([]).image_size == models.RECIPES["cnn"].image_size


@pytest.mark.slow
def test_three_classes_train_a_softmax_head_on_stored_features(weights_file, tmp_path):
    folder = tmp_path / "data"
    sample.write_faces(folder, per_class=12, size=SIZE, seed=2, classes=("happy", "sad", "neutral"))
    result = run(folder, weights_file, tmp_path / "three")
    saved = result["record"]
    assert saved.class_names == ["happy", "neutral", "sad"] and saved.threshold == 0.5  # arg-max: no threshold
    model = classifier.load(tmp_path / "three" / "m.h5")
    pixels = np.stack([model.load_image(folder / p) for p in saved.split["train"]])
    np.testing.assert_allclose(model.probabilities(pixels), head_probabilities(result),
                               atol=1e-5)
    assert saved.metrics["cross_validation"]["count"] == 36
    assert len(saved.metrics["cross_validation"]["confusion_matrix"]) == 3


def test_auto_offline_with_no_weights_is_one_line_naming_both_ways_out(small_dir, tmp_path, offline_keras_cache):
    cache_folder = offline_keras_cache
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data", str(small_dir), "--arch", "auto", "--image-size", str(SIZE), "--folds", "3",
                    "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--cache", "none"])
    message = str(exit_info.value.code)
    assert message.startswith("happysad.train: error: --arch auto found no backbone weights")
    assert str(cache_folder) in message and "--arch mobilenet --weights PATH" in message and "\n" not in message
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.skipif(not all((SHARED_WEIGHTS / name).exists() for name in (
    "mobilenet_1.0_imagenet_notop_converted.h5", models.EXPRESSION_FILE)),
                    reason="needs ../shared/weights (pretrained weights; not part of a user's clone)")
@pytest.mark.slow
def test_auto_offline_uses_the_backbones_in_keras_cache_and_says_which_it_left_out(small_dir, tmp_path,
                                                                                 offline_keras_cache, capsys):
    cache_folder = offline_keras_cache
    (cache_folder / models.BACKBONES["mobilenet"].weights_file).symlink_to(
        SHARED_WEIGHTS / "mobilenet_1.0_imagenet_notop_converted.h5")
    result = train.train(train.parse_args([
        "--data", str(small_dir), "--arch", "auto", "--image-size", str(SIZE), "--folds", "3",
        "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--cache", "none"]))
    out = capsys.readouterr().out
    assert "note: --arch auto leaves out expression: cannot get the expression network" in out
    face_mobilenet = models.FACE_MOBILENET  # MobileNet's weights, reading the face
    assert {name for name, _ in result["measurement"].scores} == {"mobilenet", face_mobilenet,
                                                                   f"mobilenet+{face_mobilenet}"}
    # With the expression network in the cache too, it tries every combination, and saves what it chose.
    (cache_folder / models.EXPRESSION_FILE).symlink_to(SHARED_WEIGHTS / models.EXPRESSION_FILE)
    result = train.train(train.parse_args([
        "--data", str(small_dir), "--arch", "auto", "--image-size", str(SIZE), "--folds", "3",
        "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--cache", "none"]))
    assert "leaves out" not in capsys.readouterr().out
    assert {name for name, _ in result["measurement"].scores} == set(features.auto_candidates(models.AUTO_BACKBONES))
    model = classifier.load(tmp_path / "m.h5")
    pixels = np.stack([model.load_image(small_dir / path) for path in result["record"].split["train"]])
    np.testing.assert_allclose(model.probabilities(pixels), head_probabilities(result),
                               atol=1e-5)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenetv2_1.0_imagenet_notop_converted.h5").exists(),
                    reason="needs ../shared/weights (ImageNet weights; not part of a user's clone)")
@pytest.mark.slow
def test_two_backbones_run_as_one_saved_network_with_the_heads_probabilities(small_dir, tmp_path, offline_keras_cache):
    cache_folder = offline_keras_cache
    for arch, name in (("mobilenet", "mobilenet_1.0_imagenet_notop_converted.h5"),
                       ("mobilenetv2", "mobilenetv2_1.0_imagenet_notop_converted.h5")):
        (cache_folder / models.BACKBONES[arch].weights_file).symlink_to(SHARED_WEIGHTS / name)
    result = train.train(train.parse_args([
        "--data", str(small_dir), "--arch", "mobilenet+mobilenetv2", "--image-size", str(SIZE), "--folds", "3",
        "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--cache", "none"]))
    assert result["features"].shape == (48, 1024 + 1280)
    model = classifier.load(tmp_path / "m.h5")
    assert {"mobilenet_backbone", "mobilenetv2_backbone"} <= {layer.name for layer in model.network.layers}
    pixels = np.stack([model.load_image(small_dir / path) for path in result["record"].split["train"]])
    np.testing.assert_allclose(model.probabilities(pixels), head_probabilities(result),
                               atol=1e-5)
