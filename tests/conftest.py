"""Shared fixtures: tiny generated datasets and one small trained model, built once per test session."""
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from happysad import cache, runtime, sample, train
from happysad.runtime import keras

# The project's TensorFlow start-up (oneDNN on, no C++ chatter), before a test module imports TensorFlow itself.
runtime.load_tensorflow()

# ImageNet weights that load without a network, beside the project root where the project's machines have them
# (never in a user's clone: tests that need them skip and say why).
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"

SMALL_IMAGE = 48
# The design card's plain network and schedule (train's defaults add augmentation, dropout and early
# stopping, which pay off on real photos): on these clean generated faces it learns in a few epochs, and
# pinning it keeps the fixtures' results and time independent of train's defaults.
PLAIN_CNN = ["--no-augment", "--dropout", "0", "--patience", "0"]
# One fit on partitions (train, validation, test), not the CNN's default K fits on folds: a sixth of the time
# for the fixtures that predict, evaluate, export and serve read.
PARTITIONS = ["--split", "0.7,0.2,0.1"]


@pytest.fixture(scope="session", autouse=True)
def stores_in_a_temporary_folder(tmp_path_factory):
    """train, review and clean keep their feature and near-copy stores in the working folder's .cache/ unless
    told otherwise: in the tests, in a folder of the session's own, never the project's. (Commands run in a
    subprocess keep their own working folder, a temporary one.)"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "DEFAULT_CACHE_DIR", str(tmp_path_factory.mktemp("stores") / "happysad"))
        yield


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory):
    """A clean happy/sad dataset: 150 generated faces per class at 48 px. Treat as read-only."""
    folder = tmp_path_factory.mktemp("faces") / "data"
    sample.write_faces(folder, per_class=150, size=SMALL_IMAGE, seed=7)
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory, faces_dir):
    """A model trained on faces_dir at 48 px: {"model": .h5 path, "logdir": ..., "data": ...}. Read-only."""
    root = tmp_path_factory.mktemp("trained")
    model_path = root / "models" / "happysad.h5"
    train.main(["--data", str(faces_dir), "--epochs", "15", "--image-size", str(SMALL_IMAGE), *PLAIN_CNN, *PARTITIONS,
                "--batch-size", "16", "--model", str(model_path), "--logdir", str(root / "logs"),
                "--run-name", "fixture", "--seed", "3"])
    return {"model": model_path, "logdir": root / "logs", "data": faces_dir, "run_dir": root / "logs" / "fixture"}


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """A stand-in for a backbone's ImageNet weights file: MobileNet (width 0.25, 32 px) with random weights whose
    BatchNorm statistics are those of random pictures. Without them the activations shrink layer by layer to
    ~1e-18, every image gets the same features, and tests of the stored-features path would hold for a model
    that ignores its input."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_025_notop.weights.h5"
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None, input_shape=(32, 32, 3))
    batch = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(base.input, layer.input)(batch).numpy()
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, inputs.mean(axis=(0, 1, 2)), inputs.var(axis=(0, 1, 2))])
    base.save_weights(path)
    return path


@pytest.fixture(scope="session")
def expression_file(tmp_path_factory):
    """A stand-in for the expression network's file (what `--arch expression` reads): its 64×64 grey input,
    residual blocks and 7-expression top, with random weights, so its tests need no ../shared/weights."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 1))
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(inputs)
    for _ in range(2):
        x = keras.layers.Add()([x, keras.layers.Conv2D(8, 3, padding="same")(x)])
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(7, 3, padding="same")(x))
    path = tmp_path_factory.mktemp("expression") / "expression_network.h5"
    keras.Model(inputs, keras.layers.Activation("softmax")(x)).save(path)
    return path


@pytest.fixture
def offline_keras_cache(tmp_path, monkeypatch):
    """An empty Keras cache folder ($KERAS_HOME/models) and no network: Keras asks for its weights files, by its
    own names, and fails as it does offline. Keras reads KERAS_HOME once, when imported, so both are set."""
    def offline(origin, *args, **kwargs):
        raise urllib.error.URLError("no network")

    folder = tmp_path / "keras"
    (folder / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(folder))
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(folder))
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    return folder / "models"


@pytest.fixture
def stand_in_downloads(weights_file, expression_file, monkeypatch):
    """`weights` imagenet without a download, for networks of several backbones (one weights setting for all):
    mobilenet025 reads the stand-in MobileNet file, the expression network its stand-in."""
    from happysad import model as models
    monkeypatch.setattr(models, "backbone_weights",
                        lambda arch, weights: "imagenet" if arch == models.EXPRESSION else str(weights_file))
    monkeypatch.setattr(models, "expression_weights_file", lambda: expression_file)


@pytest.fixture
def face_beside_network(stand_in_downloads):
    """mobilenet025 on the picture beside the expression network on the face (32 px, six channels in), with a
    random head: a network train saves for --arch auto on photos, built without a download or a training run."""
    from happysad import model as models
    network = models.build_linear(("mobilenet025", models.EXPRESSION), 2, 32, beside=True)
    dim = network.get_layer("prediction").get_weights()[0].shape[0]
    models.set_head(network, np.random.default_rng(0).normal(size=(1, dim)), np.zeros(1))
    return network
