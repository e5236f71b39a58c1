"""What a training run writes for TensorBoard, read back with TensorBoard's own event reader and server."""
import json
import socket
import subprocess
import sys
import time

import cv2
import httpx
import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from happysad import callbacks, data, images, model as models, record

SCALARS = ("epoch_loss", "epoch_accuracy", "epoch_precision", "epoch_recall", "epoch_auc")


def load(folder) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.TENSORS: 0, event_accumulator.GRAPH: 1})
    events.Reload()
    return events


def plugin_tags(events) -> dict:
    """tag -> the TensorBoard plugin that shows it (scalars, images, pr_curves, hparams, ...)."""
    return {tag: events.SummaryMetadata(tag).plugin_data.plugin_name for tag in events.Tags()["tensors"]}


def value(event) -> float:
    return float(tensor_util.make_ndarray(event.tensor_proto))


def epochs_run(trained) -> int:
    return len(record.read(trained["model"]).metrics["epoch_seconds"])


def test_train_folder_has_scalars_learning_rate_timing_graph_and_samples(trained):
    events = load(trained["run_dir"] / "train")
    tags = plugin_tags(events)
    for tag in (*SCALARS, "epoch_learning_rate", "epoch_epoch_seconds", "epoch_images_per_second"):
        assert tags[tag] == "scalars", tag
        assert [e.step for e in events.Tensors(tag)] == list(range(epochs_run(trained))), tag
    assert value(events.Tensors("epoch_learning_rate")[0]) == pytest.approx(1e-3)
    assert all(value(e) > 0 for e in events.Tensors("epoch_epoch_seconds"))
    assert events.Tags()["graph"], "no op graph in the event files"
    graph = events.Graph()
    ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
    assert {"Conv2D", "MatMul", "Sigmoid"} <= ops  # the model's own layers, traced
    assert tags["keras"] == "graph_keras_model"  # the conceptual graph
    assert tags["samples"] == "images"
    width, height, png = tensor_util.make_ndarray(events.Tensors("samples")[0].tensor_proto)
    assert png.startswith(b"\x89PNG") and int(width) > 100


def test_validation_folder_has_scalars_confusion_matrix_and_pr_curve_every_epoch(trained):
    tags = plugin_tags(events := load(trained["run_dir"] / "validation"))
    for tag in SCALARS:
        assert tags[tag] == "scalars", tag
    assert tags["confusion_matrix"] == "images"
    assert [e.step for e in events.Tensors("confusion_matrix")] == list(range(epochs_run(trained)))
    (pr_tag,) = [tag for tag, plugin in tags.items() if plugin == "pr_curves"]
    assert len(events.Tensors(pr_tag)) == epochs_run(trained)
    final = record.read(trained["model"]).metrics["final_epoch"]
    assert value(events.Tensors("epoch_accuracy")[-1]) == pytest.approx(final["val_accuracy"], abs=1e-6)


def test_run_folder_has_hparams_and_final_test_metrics(trained):
    events = load(trained["run_dir"])
    tags = plugin_tags(events)
    assert tags[hparams_metadata.SESSION_START_INFO_TAG] == "hparams"
    start = hparams_metadata.parse_session_start_info_plugin_data(
        events.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
    hparams = {name: v.number_value or v.string_value for name, v in start.hparams.items()}
    trained_record = record.read(trained["model"])
    for name in ("batch_size", "epochs", "learning_rate"):
        assert hparams[name] == pytest.approx(trained_record.hyperparameters[name]), name
    # Settings the record keeps in fields of their own, shown from there:
    assert (hparams["image_size"], hparams["seed"]) == (trained_record.preprocessing.image_size, trained_record.seed)
    assert "image_size" not in trained_record.hyperparameters and "seed" not in trained_record.hyperparameters
    assert hparams["data"] == str(trained["data"])
    assert "model" not in hparams and "logdir" not in hparams
    test = trained_record.metrics["test"]
    assert value(events.Tensors("test/accuracy")[0]) == pytest.approx(test["accuracy"], abs=1e-6)
    assert events.Tensors("test/accuracy")[0].step == epochs_run(trained) - 1


def test_record_history_matches_the_event_files(trained):
    saved = record.read(trained["model"])
    events = load(trained["run_dir"] / "validation")
    logged = [value(e) for e in sorted(events.Tensors("epoch_loss"), key=lambda e: e.step)]
    assert len(saved.history["loss"]) == len(saved.history["val_loss"]) == epochs_run(trained)
    assert saved.history["val_loss"] == pytest.approx(logged, rel=1e-6)
    assert saved.history["val_loss"][-1] == pytest.approx(saved.metrics["final_epoch"]["val_loss"], rel=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_serves_the_run(trained, tmp_path):
    port = free_port()
    log = open(tmp_path / "tensorboard.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(trained["logdir"]),
                               "--port", str(port), "--host", "127.0.0.1"], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, runs = time.monotonic() + 120, []
        while time.monotonic() < deadline and "fixture/validation" not in runs:
            time.sleep(1)
            try:
                runs = httpx.get(f"{base}/data/runs", timeout=5).json()
            except httpx.TransportError:
                assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()
        assert {"fixture", "fixture/train", "fixture/validation"} <= set(runs)
        scalars = httpx.get(f"{base}/data/plugin/scalars/tags", timeout=10).json()
        assert {"epoch_loss", "epoch_learning_rate"} <= set(scalars["fixture/train"])
        assert "test/accuracy" in scalars["fixture"]
        images = httpx.get(f"{base}/data/plugin/images/tags", timeout=10).json()
        assert "confusion_matrix" in images["fixture/validation"] and "samples" in images["fixture/train"]
        graphs = httpx.get(f"{base}/data/plugin/graphs/info", timeout=10).json()
        assert graphs["fixture/train"]["run_graph"]
        experiment = httpx.post(f"{base}/data/plugin/hparams/experiment", timeout=10,
                                content=json.dumps({"experimentName": ""}),
                                headers={"Content-Type": "application/json"}).json()
        assert {"image_size", "batch_size", "epochs", "seed"} <= {h["name"] for h in experiment["hparamInfos"]}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_callbacks_serve_a_second_fit_as_fine_tuning_makes(tmp_path):
    paths, labels = [], []
    for label, colour in enumerate(((0, 0, 255), (255, 0, 0))):
        for i in range(3):
            paths.append(str(tmp_path / f"{label}_{i}.png"))
            labels.append(label)
            cv2.imwrite(paths[-1], np.full((8, 8, 3), colour, np.uint8))
    files = data.Files(paths, labels)
    dataset = data.make_dataset(files, images.Preprocessing(8), 4, binary=True)
    network = models.compile_model(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                                                     keras.layers.Dense(1, activation="sigmoid")]), 2)
    run_dir = tmp_path / "run"
    board = callbacks.tensorboard(run_dir, {"epochs": 1, "weights": None, "class_weight": {0: 1.0}}, files,
                                  dataset, labels, ["blue", "red"], images.Preprocessing(8))
    network.fit(dataset, validation_data=dataset, epochs=1, callbacks=board, shuffle=False, verbose=0)
    network.fit(dataset, validation_data=dataset, epochs=2, initial_epoch=1, callbacks=board, shuffle=False,
                verbose=0)
    root = load(run_dir)
    assert len(root.Tensors(hparams_metadata.SESSION_START_INFO_TAG)) == 1
    start = hparams_metadata.parse_session_start_info_plugin_data(
        root.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
    assert set(start.hparams) == {"epochs", "image_size", "faces", "face_beside", "upright", "seed"}  # no None or dicts
    assert len(load(run_dir / "train").Tensors("samples")) == 1
    assert [e.step for e in load(run_dir / "validation").Tensors("confusion_matrix")] == [0, 1]
