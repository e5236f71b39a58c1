"""Shared fixtures: tiny generated datasets and one small trained model, built once per test session."""
import pytest

from happysad import sample, train

SMALL_IMAGE = 48
# The design card's plain network and schedule (train's defaults add augmentation, dropout and early
# stopping, which pay off on real photos): on these clean generated faces it learns in a few epochs, and
# pinning it keeps the fixtures' results and time independent of train's defaults.
PLAIN_CNN = ["--no-augment", "--dropout", "0", "--patience", "0"]


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory):
    """A clean happy/sad dataset: 150 generated faces per class at 48 px. Treat as read-only."""
    folder = tmp_path_factory.mktemp("faces") / "data"
    sample.make_dataset(folder, per_class=150, size=SMALL_IMAGE, seed=7)
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory, faces_dir):
    """A model trained on faces_dir at 48 px: {"model": .h5 path, "logdir": ..., "data": ...}. Read-only."""
    root = tmp_path_factory.mktemp("trained")
    model_path = root / "models" / "happysad.h5"
    train.main(["--data", str(faces_dir), "--epochs", "15", "--image-size", str(SMALL_IMAGE), *PLAIN_CNN,
                "--batch-size", "16", "--model", str(model_path), "--logdir", str(root / "logs"),
                "--run-name", "fixture", "--seed", "3"])
    return {"model": model_path, "logdir": root / "logs", "data": faces_dir, "run_dir": root / "logs" / "fixture"}
