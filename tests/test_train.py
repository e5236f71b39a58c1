"""train end to end: it learns, writes the model, the record and TensorBoard events, and fails clearly."""
import json

import numpy as np
import pytest
import tensorflow as tf

from happysad import classifier, data, record, sample, train


def scalar_tags(folder):
    tags = set()
    for event_file in folder.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_training_learns_and_generalises_to_new_faces(trained, tmp_path):
    """A real learning check: faces the model never saw (another generator seed) are mostly right."""
    fresh = tmp_path / "fresh"
    sample.make_dataset(fresh, per_class=50, size=48, seed=2024)
    model = classifier.load(trained["model"])
    files, _ = data.list_images(fresh, model.class_names)
    pixels = np.stack([model.load_image(p) for p in files.paths])
    predicted = [model.class_names.index(p.label) for p in model.predict(pixels)]
    accuracy = np.mean(np.asarray(predicted) == np.asarray(files.labels))
    assert accuracy >= 0.7, accuracy  # chance is 0.5; 0.7 on 100 images is 4 standard deviations above it


def test_record_lists_the_exact_split(trained):
    saved = record.read(trained["model"])
    assert saved.class_names == ["happy", "sad"]
    assert saved.image_size == 48 and saved.seed == 3
    assert 0 < saved.threshold < 1 and saved.metrics["test"]["threshold"] == saved.threshold  # chosen on validation
    files, _ = data.list_images(trained["data"], saved.class_names)
    expected = data.split(files, tuple(saved.hyperparameters["split"]), saved.seed,
                          groups=data.near_copy_groups(files))
    for name in data.PARTITIONS:
        assert saved.split[name] == data.relative(expected[name], trained["data"])
    everything = [p for name in data.PARTITIONS for p in saved.split[name]]
    assert len(everything) == len(set(everything)) == len(files)
    test = saved.metrics["test"]
    assert test["count"] == len(saved.split["test"])
    assert np.sum(test["confusion_matrix"]) == test["count"]
    assert saved.model_sha256 == record.file_sha256(trained["model"])
    run_copy = json.loads((trained["run_dir"] / "record.json").read_text())
    assert run_copy["split"] == saved.split


def test_tensorboard_events_and_curves(trained):
    run_dir = trained["run_dir"]
    assert {"epoch_loss", "epoch_accuracy"} <= scalar_tags(run_dir / "train")
    assert {"epoch_loss", "epoch_accuracy"} <= scalar_tags(run_dir / "validation")
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(record.read(trained["model"]).metrics["epoch_seconds"]) == 15


def run_train(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    return str(exit_info.value.code)


def test_clear_errors(tmp_path, capsys):
    assert "does not exist" in run_train(["--data", str(tmp_path / "nope")], capsys)
    (tmp_path / "one" / "happy").mkdir(parents=True)
    assert "at least two class folders" in run_train(["--data", str(tmp_path / "one")], capsys)
    (tmp_path / "one" / "sad").mkdir()
    assert "no images" in run_train(["--data", str(tmp_path / "one")], capsys)


def test_undecodable_file_is_named_with_a_pointer_to_clean(tmp_path, faces_dir, capsys):
    folder = tmp_path / "data"
    for name in ("happy", "sad"):
        (folder / name).mkdir(parents=True)
        for path in sorted((faces_dir / name).iterdir())[:6]:
            (folder / name / path.name).write_bytes(path.read_bytes())
    broken = folder / "sad" / "broken.jpg"
    broken.write_bytes((faces_dir / "sad").iterdir().__next__().read_bytes()[:200])
    message = run_train(["--data", str(folder), "--epochs", "1", "--image-size", "32",
                         "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs")], capsys)
    assert "broken.jpg" in message and "happysad.clean" in message
    assert not (tmp_path / "m.h5").exists()


def test_fine_tune_stage_continues_the_epoch_count(tmp_path, faces_dir):
    """The second stage's epochs follow the first's in the record and in TensorBoard (steps 0, 1, 2)."""
    import keras

    weights = tmp_path / "mobilenet_v2_notop.weights.h5"  # stands in for Keras' downloaded ImageNet file
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    train.main(["--data", str(faces_dir), "--arch", "mobilenetv2", "--weights", str(weights), "--epochs", "1",
                "--fine-tune", "4", "--fine-tune-epochs", "2", "--image-size", "32", "--batch-size", "64",
                "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--run-name", "ft"])
    assert len(record.read(tmp_path / "m.h5").metrics["epoch_seconds"]) == 3
    steps = set()
    for event_file in (tmp_path / "logs" / "ft" / "train").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            if any(value.tag == "epoch_loss" for value in event.summary.value):
                steps.add(event.step)
    assert steps == {0, 1, 2}
