"""train end to end: it learns, writes the model, the record and TensorBoard events, and fails clearly."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from happysad import classifier, data, model as models, record, sample, train
from conftest import PARTITIONS
from happysad.files import sha256


def scalar_tags(folder):
    tags = set()
    for event_file in folder.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def epoch_steps(folder, tag="epoch_loss"):
    """The steps at which a run folder's events hold `tag`: the epochs TensorBoard shows."""
    steps = set()
    for event_file in folder.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            if any(value.tag == tag for value in event.summary.value):
                steps.add(event.step)
    return steps


def copy_faces(faces_dir, folder, per_class: int) -> None:
    """The first per_class faces of each class of faces_dir, copied into folder/<class>/."""
    for name in ("happy", "sad"):
        (folder / name).mkdir(parents=True)
        for path in sorted((faces_dir / name).iterdir())[:per_class]:
            (folder / name / path.name).write_bytes(path.read_bytes())


def test_training_learns_and_generalises_to_new_faces(trained, tmp_path):
    """A real learning check: faces the model never saw (another generator seed) are mostly right."""
    fresh = tmp_path / "fresh"
    sample.write_faces(fresh, per_class=50, size=48, seed=2024)
    model = classifier.load(trained["model"])
    files, _ = data.list_images(fresh, model.class_names)
    pixels = np.stack([model.load_image(p) for p in files.paths])
    predicted = [model.class_names.index(p.label) for p in model.predict(pixels)]
    accuracy = np.mean(np.asarray(predicted) == np.asarray(files.labels))
    assert accuracy >= 0.7, accuracy  # chance is 0.5; 0.7 on 100 images is 4 standard deviations above it


def test_record_lists_the_exact_split(trained):
    saved = record.read(trained["model"])
    assert saved.class_names == ["happy", "sad"]
    assert saved.preprocessing.image_size == 48 and saved.seed == 3
    assert saved.threshold == 0.5 and saved.metrics["test"]["threshold"] == saved.threshold  # calibrated: 0.5
    assert saved.calibration["fitted_on"] == "validation partition" and saved.calibration["scale"] > 0
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
    assert saved.model_sha256 == sha256(trained["model"])
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


def test_a_threshold_for_more_than_two_classes_is_refused_before_training(tmp_path, capsys):
    sample.write_faces(tmp_path / "three", per_class=3, size=32, seed=1, classes=("happy", "sad", "neutral"))
    message = run_train(["--data", str(tmp_path / "three"), "--threshold", "0.7", "--model", str(tmp_path / "m.h5"),
                         "--logdir", str(tmp_path / "logs")], capsys)
    assert message.startswith("happysad.train: error: --threshold applies to two classes;") and "has 3" in message
    assert not (tmp_path / "logs").exists()

def test_undecodable_file_is_named_with_a_pointer_to_clean(tmp_path, faces_dir, capsys):
    folder = tmp_path / "data"
    copy_faces(faces_dir, folder, 6)
    broken = folder / "sad" / "broken.jpg"
    broken.write_bytes((faces_dir / "sad").iterdir().__next__().read_bytes()[:200])
    message = run_train(["--data", str(folder), "--epochs", "1", "--image-size", "32",
                         "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs")], capsys)
    assert "broken.jpg" in message and "happysad.clean" in message
    assert not (tmp_path / "m.h5").exists()



def test_a_file_that_cannot_be_read_is_named_before_training(tmp_path, faces_dir, capsys):
    folder = tmp_path / "data"
    copy_faces(faces_dir, folder, 6)
    (folder / "happy" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    message = run_train(["--data", str(folder), "--epochs", "1", "--image-size", "32",
                         "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs")], capsys)
    assert message == (f"happysad.train: error: 1 file(s) cannot be read: {folder / 'happy' / 'gone.jpg'} (a link to "
                       f"nothing); run `python -m happysad.clean {folder}` first")

@pytest.mark.slow
def test_an_undecodable_file_in_the_holdout_is_named_too(tmp_path, faces_dir, capsys):
    """The holdout is read only after the fits: its broken file is still the one-line error naming it."""
    folder = tmp_path / "data"
    copy_faces(faces_dir, folder, 8)
    argv = ["--data", str(folder), "--epochs", "1", "--image-size", "32", "--holdout", "0.25",
            "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--cache", "none"]
    config = train.folds_by_size(train.parse_args(argv))
    _, held_out, _, _ = train.cut_folds(config, train.read_folder(config))
    broken = held_out.paths[0]
    with open(broken, "r+b") as handle:
        handle.truncate(200)
    message = run_train(argv, capsys)
    assert broken in message and "happysad.clean" in message
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.slow
def test_fine_tune_stage_continues_the_epoch_count(tmp_path, faces_dir):
    """The second stage's epochs follow the first's in the record and in TensorBoard (steps 0, 1, 2)."""
    import keras

    weights = tmp_path / "mobilenet_v2_notop.weights.h5"  # stands in for Keras' downloaded ImageNet file
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    train.main(["--data", str(faces_dir), "--arch", "mobilenetv2", "--weights", str(weights), "--epochs", "1",
                "--fine-tune", "4", "--fine-tune-epochs", "2", "--image-size", "32", "--batch-size", "64",
                "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs"), "--run-name", "ft"])
    assert len(record.read(tmp_path / "m.h5").metrics["epoch_seconds"]) == 3
    assert epoch_steps(tmp_path / "logs" / "ft" / "train") == {0, 1, 2}


KILL_AFTER_EPOCH = """
import os, signal, sys
from happysad import callbacks, train
original = callbacks.ResumeState.on_epoch_end
def on_epoch_end(self, epoch, logs=None):
    original(self, epoch, logs)
    if epoch == int(os.environ["KILL_AFTER_EPOCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
callbacks.ResumeState.on_epoch_end = on_epoch_end
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_killed_run_resumes_at_its_next_epoch_with_the_same_split(tmp_path, faces_dir, capsys):
    import subprocess
    import sys

    model_path = tmp_path / "m.h5"
    flags = ["--data", str(faces_dir), "--epochs", "4", "--image-size", "32", "--batch-size", "64",
             "--model", str(model_path), "--logdir", str(tmp_path / "logs"), "--run-name", "killed",
             "--patience", "3", "--seed", "5", *PARTITIONS]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH, *flags], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "KILL_AFTER_EPOCH": "1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not model_path.exists() and (tmp_path / ".m.h5.resume" / "state.json").exists()

    # Another seed would cut another split, and train on the first run's test photos: refused, backup kept.
    other = [*flags[:flags.index("--seed")], "--seed", "6", *flags[flags.index("--seed") + 2:], "--image-size", "48"]
    message = run_train([*other, "--resume"], capsys)
    assert message.startswith("happysad.train: error: --resume: the interrupted run was started with ")
    assert "--image-size 32, not 48" in message and "--seed 5, not 6" in message
    assert (tmp_path / ".m.h5.resume" / "state.json").exists()

    train.main([*flags, "--resume"])
    out = capsys.readouterr().out
    assert "Epoch 3/4" in out and "Epoch 1/4" not in out and "Epoch 2/4" not in out
    saved = record.read(model_path)
    assert len(saved.metrics["epoch_seconds"]) == len(saved.history["val_loss"]) == 4
    best = int(np.argmin(saved.history["val_loss"]))  # early stopping keeps the best epoch's weights
    assert saved.metrics["saved_epoch"]["epoch"] == best + 1
    assert saved.metrics["saved_epoch"]["val_loss"] == saved.history["val_loss"][best]
    assert len(json.loads((tmp_path / "logs" / "killed" / "record.json").read_text())["metrics"]["epoch_seconds"]) == 4
    files, _ = data.list_images(faces_dir, saved.class_names)
    expected = data.split(files, (0.7, 0.2, 0.1), 5, groups=data.near_copy_groups(files))
    assert saved.split["test"] == data.relative(expected["test"], faces_dir)
    assert classifier.load(model_path).class_names == ["happy", "sad"]
    assert not (tmp_path / ".m.h5.resume").exists()  # the run ended: nothing is left to resume
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["killed"]  # the same TensorBoard run
    assert epoch_steps(tmp_path / "logs" / "killed" / "train") == {0, 1, 2, 3}


@pytest.mark.slow
def test_a_killed_fine_tuning_resumes_after_the_head_with_every_epoch_in_the_record(tmp_path, faces_dir, capsys):
    """The head (2 epochs on stored features) trains again in seconds; the fine-tuning resumes from its backup,
    and the record's history holds the head's epochs, the fine-tuning's from before the kill and the rest."""
    import subprocess
    import sys

    import keras

    weights = tmp_path / "mobilenet_v2_notop.weights.h5"  # stands in for Keras' downloaded ImageNet file
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    model_path = tmp_path / "m.h5"
    flags = ["--data", str(faces_dir), "--arch", "mobilenetv2", "--weights", str(weights), "--epochs", "2",
             "--patience", "0", "--fine-tune", "4", "--fine-tune-epochs", "3", "--image-size", "32",
             "--batch-size", "64", "--model", str(model_path), "--logdir", str(tmp_path / "logs"), "--run-name", "ft"]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH, *flags], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "KILL_AFTER_EPOCH": "3"})  # the fine-tuning's second epoch
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved_before_kill = json.loads((tmp_path / ".m.h5.resume" / "state.json").read_text())["history"]
    assert len(saved_before_kill["val_loss"]) == 2  # the fine-tuning's epochs only: the head's re-train

    train.main([*flags, "--resume"])
    out = capsys.readouterr().out
    assert "Epoch 5/5" in out and "Epoch 3/5" not in out and "Epoch 4/5" not in out
    history = record.read(model_path).history
    assert len(history["val_loss"]) == len(history["epoch_seconds"]) == 5
    assert history["val_loss"][2:4] == saved_before_kill["val_loss"]


@pytest.mark.slow
def test_resume_with_nothing_to_resume_is_a_clear_error_and_a_leftover_is_named(tmp_path, faces_dir, capsys):
    message = run_train(["--data", str(faces_dir), "--model", str(tmp_path / "m.h5"), "--resume", *PARTITIONS], capsys)
    assert "no interrupted run to continue" in message
    leftover = tmp_path / ".m.h5.resume"
    leftover.mkdir()
    (leftover / "state.json").write_text("{}")
    train.main(["--data", str(faces_dir), "--model", str(tmp_path / "m.h5"), "--epochs", "1", "--image-size", "32",
                "--logdir", str(tmp_path / "logs"), *PARTITIONS])
    assert "holds the backup of an interrupted run; starting over" in capsys.readouterr().out
    assert not leftover.exists()


def test_a_run_whose_first_epoch_was_best_is_flagged(capsys):
    train.warn_if_nothing_learnt([0.69, 0.70, 0.72], "the validation loss")
    assert "warning: the validation loss was lowest after the first epoch" in capsys.readouterr().out
    train.warn_if_nothing_learnt([0.69, 0.55, 0.60], "the validation loss")
    assert capsys.readouterr().out == ""


def test_the_closing_line_gives_each_class_recall_and_the_threshold():
    from happysad import metrics

    summary = metrics.summarize([0, 0, 0, 1, 1], np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4],
                                                             [0.1, 0.9]]), ["happy", "sad"], threshold=0.35)
    line = train.test_line(summary, ["happy", "sad"])
    assert "recall per class: happy 0.667  sad 1.000" in line and "(threshold 0.35)" in line
    assert "accuracy 0.800 (95% interval 0.38-0.96)" in line  # 4 of 5 right says little


@pytest.mark.parametrize("argv, message", [
    (["--arch", "mobilenet", "--split", "0.6,0.2,0.2"], "--split applies to the CNN and fine-tuning"),
    (["--arch", "mobilenet", "--folds", "2"], "--folds must be at least 3"),
    (["--arch", "mobilenet", "--views", "2", "--no-class-weights"], "--views, --class-weights: for fits on images"),
    (["--arch", "mobilenet", "--epochs", "3", "--resume"], "--epochs, --resume: for fits on images"),
    (["--arch", "auto", "--weights", "x_notop.h5"], "--weights must be imagenet"),
    (["--arch", "mobilenet+cnn"], "choose cnn, auto, or one or more of"),
    (["--split", "0.7,0.2,0.1", "--holdout", "0.2"], "--holdout applies to cross-validation"),
    (["--split", "0.7,0.2,0.1", "--folds", "4"], "--folds applies to cross-validation"),
    (["--resume"], "--resume: for one fit on partitions"),
    (["--checkpoint", "--strategy", "multiworker"], "--checkpoint, --strategy multiworker: for one fit on partitions"),
    (["--arch", "mobilenet", "--holdout", "0.6"], "--holdout must be 0 or from 0.05 to 0.5"),
    (["--arch", "auto", "--fine-tune", "3"], "--fine-tune opens the top of one backbone"),
])
def test_cross_validation_options_are_checked_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def cnn_on_folds(tmp_path_factory, faces_dir):
    """The CNN's default: 3 fits on folds, then one on every photo but a 20 % holdout."""
    root = tmp_path_factory.mktemp("cnn-folds")
    result = train.train(train.parse_args([
        "--data", str(faces_dir), "--folds", "3", "--epochs", "20", "--patience", "0", "--holdout", "0.2",
        "--image-size", "48", "--batch-size", "16", "--no-augment", "--dropout", "0", "--model", str(root / "m.h5"),
        "--logdir", str(root / "logs"), "--run-name", "folds", "--seed", "2"]))
    return {"model": root / "m.h5", "run_dir": root / "logs" / "folds", **result}



@pytest.mark.slow
def test_the_cnn_measures_itself_on_every_photo_and_saves_a_network_trained_on_all_of_them(cnn_on_folds, faces_dir):
    saved = record.read(cnn_on_folds["model"])
    chosen = cnn_on_folds["measurement"].final.epochs
    files, _ = data.list_images(faces_dir, saved.class_names)
    assert saved.split["validation"] == [] and len(saved.split["test"]) == 60
    assert sorted(saved.split["train"] + saved.split["test"]) == sorted(data.relative(files, faces_dir))
    measured = saved.metrics["cross_validation"]
    assert measured["count"] == 240 and measured["folds"] == 3 and measured["choice"]["epochs"] == chosen
    assert saved.metrics["fold_epochs"] == [20, 20, 20]  # no early stopping: every fold ran every epoch
    assert saved.calibration["fitted_on"] == "out-of-fold predictions"
    # The saved network trained on all 240 photos for the epochs the folds chose, and no more.
    assert len(saved.history["loss"]) == chosen == saved.hyperparameters["epochs_chosen"]
    assert saved.hyperparameters["averaged_epochs"] == min(chosen, models.CNN_AVERAGED_EPOCHS)
    assert set(saved.hyperparameters["class_weight"]) == {"0", "1"}  # printed and kept, as on partitions
    assert epoch_steps(cnn_on_folds["run_dir"] / "train") == set(range(chosen))
    assert epoch_steps(cnn_on_folds["run_dir"] / "folds") == set(range(max(saved.metrics["fold_epochs"])))
    assert not (cnn_on_folds["run_dir"] / "validation").exists()
    # What the record says about the holdout is what the saved model does there.
    model = classifier.load(cnn_on_folds["model"])
    paths = [faces_dir / p for p in saved.split["test"]]
    labels = [saved.class_names.index(p.split("/")[0]) for p in saved.split["test"]]
    probabilities = model.probabilities(np.stack([model.load_image(p) for p in paths]))
    assert np.mean(probabilities.argmax(axis=1) == labels) == pytest.approx(saved.metrics["test"]["accuracy"])
    # It learnt (0.71 and 0.70 here): chance is 0.5, and 0.6 is 2.5 standard deviations above it on 60 photos.
    assert measured["accuracy"] > 0.6 and saved.metrics["test"]["accuracy"] > 0.6
    # Fits no class: the saved network's own limit on its photos, widened as the fold networks measured.
    from happysad import marks

    # It measures the mean and the maximum of each convolution block's maps (16, 32 and 16 of them), and the
    # one pass that scores a picture returns them.
    reader = models.domain_reader(model.network, marks.BLOCK_STATISTICS)
    pixels = np.stack([model.load_image(faces_dir / p) for p in saved.split["train"]])
    vectors = reader.predict(pixels, verbose=0)
    np.testing.assert_allclose(model.scores(pixels)[1], vectors, rtol=1e-4, atol=1e-5)
    domain = marks.Domain.from_record(saved.domain)
    own = marks.far_limit(marks.distances(vectors, domain.centres))
    assert domain.reads == marks.BLOCK_STATISTICS and domain.centres.shape[1] == 2 * (16 + 32 + 16)
    assert len(saved.metrics["domain_widening"]) == 3
    assert domain.limit == pytest.approx(own * np.median(saved.metrics["domain_widening"]), rel=1e-4)
    assert np.mean(marks.distances(vectors, domain.centres) > domain.limit) <= marks.FAR_SHARE


@pytest.mark.slow
def test_the_saved_cnn_holds_the_mean_of_its_last_epochs_weights_as_its_folds_were_scored(
        tmp_path, faces_dir, monkeypatch):
    from happysad import callbacks
    from happysad.runtime import keras

    kept = []  # what each averaging had, the final fit's last
    average = callbacks.AveragedWeights.average
    monkeypatch.setattr(callbacks.AveragedWeights, "average",
                        lambda self: (kept.append([[v.copy() for v in w] for w in self.kept]), average(self)))
    small = tmp_path / "data"
    copy_faces(faces_dir, small, 15)
    result = train.train(train.parse_args([
        "--data", str(small), "--folds", "3", "--epochs", "5", "--patience", "0", "--image-size", "32",
        "--model", str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs")]))
    window = min(result["measurement"].final.epochs, models.CNN_AVERAGED_EPOCHS)
    assert window > 1 and len(kept[-1]) == window
    saved = keras.models.load_model(tmp_path / "m.h5", compile=False)
    convolutions = [layer for layer in saved.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer, index in zip(convolutions, (0, 2, 4)):  # the kernels: trainable weights 0, 2, 4
        np.testing.assert_allclose(layer.get_weights()[0], np.mean([w[index] for w in kept[-1]], axis=0),
                                   rtol=1e-5, atol=1e-6)

@pytest.mark.slow
def test_the_cnn_prints_its_cross_validated_figure_and_what_it_chose(tmp_path, faces_dir, capsys, monkeypatch):
    small = tmp_path / "data"
    copy_faces(faces_dir, small, 15)
    monkeypatch.setattr(models, "LARGE_FOLDER", 30)  # --folds given: cross-validated whatever the folder's size
    train.main(["--data", str(small), "--folds", "3", "--epochs", "2", "--image-size", "32", "--model",
                str(tmp_path / "m.h5"), "--logdir", str(tmp_path / "logs")])
    out = capsys.readouterr().out
    assert out.count("fold ") >= 3 and "fold 3/3: 2 epochs on 20 images" in out
    assert "cross-validated accuracy" in out and "on all 30 photos, each scored by a model that never saw it" in out
    assert "trained on all 30 photos for" in out and (tmp_path / "m.h5").exists()


def test_a_large_folder_trains_the_cnn_once_on_partitions_and_says_so(tmp_path, faces_dir, capsys, monkeypatch):
    small = tmp_path / "data"
    copy_faces(faces_dir, small, 15)
    monkeypatch.setattr(models, "LARGE_FOLDER", 30)  # as a folder of 10,000 photos would
    train.main(["--data", str(small), "--epochs", "1", "--image-size", "32", "--model", str(tmp_path / "m.h5"),
                "--logdir", str(tmp_path / "logs")])
    out = capsys.readouterr().out
    assert "note: 30 photos: one fit on partitions 0.7,0.2,0.1 (its test partition of about 3 photos" in out
    assert "fold 1/" not in out
    saved = record.read(tmp_path / "m.h5")
    assert saved.split["validation"] and saved.split["test"] and "cross_validation" not in saved.metrics
    assert saved.hyperparameters["split"] == [0.7, 0.2, 0.1]
    monkeypatch.setattr(models, "LARGE_FOLDER", 31)  # one photo short of it: the CNN cross-validates
    assert train.folds_by_size(train.parse_args(["--data", str(small)])).folds == models.CNN_FOLDS


def test_each_fold_after_the_first_runs_patience_epochs_past_the_lowest_loss_of_the_folds_before_it():
    """No fold's own photos decide where its fit ends: the first runs every epoch, the others as long as the
    folds before them found useful."""
    from happysad.config import TrainConfig

    labels = np.repeat([0, 1], 6)
    folds = np.tile([0, 1, 2], 4)
    confidence = [0.6, 0.7, 0.8, 0.9, 0.8, 0.7, 0.6]  # fold 0's loss is lowest after epoch 4
    right = np.array([[c] * 4 for c in confidence])
    first = np.stack([np.stack([1 - p, p], axis=1) for p in np.where(labels[folds == 0] == 1, right, 1 - right)])
    config = TrainConfig.build(epochs=30, patience=3)
    assert train.fold_epochs(config, [], labels, folds) == 30
    assert train.fold_epochs(config, [first], labels, folds) == 4 + 3
    assert train.fold_epochs(TrainConfig.build(epochs=30, patience=0), [first], labels, folds) == 30
    assert train.fold_epochs(TrainConfig.build(epochs=5, patience=3), [first], labels, folds) == 5


@pytest.mark.slow
def test_evaluate_draws_the_cnns_training_loss_beside_the_folds_pooled_held_out_loss(cnn_on_folds, tmp_path,
                                                                                     monkeypatch):
    from happysad import evaluate, reports

    drawn = {}
    original = reports.curves_figure

    def curves_figure(history, held_out="validation"):
        drawn.update(history=history, held_out=held_out)
        return original(history, held_out)

    monkeypatch.setattr(reports, "curves_figure", curves_figure)
    evaluate.main(["--model", str(cnn_on_folds["model"]), "--out", str(tmp_path / "report")])
    measured = cnn_on_folds["measurement"]
    assert drawn["held_out"] == "held-out folds, pooled"
    assert drawn["history"]["val_loss"] == [measured.scores[("cnn", epoch)] for epoch in range(1, 21)]
    assert drawn["history"]["loss"] == record.read(cnn_on_folds["model"]).history["loss"]
    assert (tmp_path / "report" / "training_curves.png").stat().st_size > 0
