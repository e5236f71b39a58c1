"""evaluate on images whose predictions are known in advance: a tiny model whose output is the red value of
the top-left pixel, on flat-coloured PNGs (lossless, so the red value survives decoding and resizing)."""
import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from happysad import evaluate, images, predict, record

SIZE = 8
# Red value (0-255) of each image = the forced model's probability of "sad" (x 255). Threshold 0.5.
FOLDER = {"happy": [26, 51, 77, 204], "sad": [230, 179, 102, 115, 153]}  # mistakes: happy 204, sad 102, 115
VALIDATION = {"happy": [51, 153], "sad": [204, 255]}
TEST = {"happy": [51], "sad": [102]}


def write_png(path, red: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((SIZE, SIZE, 3), (40, 90, red), np.uint8)  # BGR for OpenCV: red is the last channel
    cv2.imwrite(str(path), pixels)


def write_folder(folder, reds: dict, prefix: str = "") -> list:
    written = []
    for name, values in reds.items():
        for i, red in enumerate(values):
            write_png(folder / name / f"{prefix}{i}_{red}.png", red)
            written.append(f"{name}/{prefix}{i}_{red}.png")
    return written


def forced_model(num_classes: int) -> keras.Model:
    """Output = red of the top-left pixel (two classes), or for three classes (blue, green, red) a softmax
    that picks the strongest colour."""
    inputs = keras.Input((SIZE, SIZE, 3))
    corner = keras.layers.Flatten()(keras.layers.Cropping2D(((0, SIZE - 1), (0, SIZE - 1)))(inputs))
    if num_classes == 2:
        output = keras.layers.Dense(1, name="red")(corner)
        kernel = np.array([[1.0], [0.0], [0.0]])
    else:
        output = keras.layers.Dense(3, activation="softmax", name="colour")(corner)
        kernel = 20 * np.fliplr(np.eye(3))  # classes in name order blue, green, red <- channels B, G, R
    model = keras.Model(inputs, output)
    model.layers[-1].set_weights([kernel, np.zeros(kernel.shape[1])])
    return model


@pytest.fixture(scope="module")
def forced(tmp_path_factory):
    """A two-class forced model with a record (train/validation/test lists) and a run folder."""
    root = tmp_path_factory.mktemp("forced")
    data_dir = root / "data"
    split = {"train": write_folder(data_dir, {"happy": [0], "sad": [255]}, "train"),
             "validation": write_folder(data_dir, VALIDATION, "val"),
             "test": write_folder(data_dir, TEST, "test")}
    run_dir = root / "logs" / "forced"
    run_dir.mkdir(parents=True)
    model_path = root / "models" / "forced.h5"
    record.save(forced_model(2), model_path, record.Record(
        class_names=["happy", "sad"], preprocessing=images.Preprocessing(SIZE), data_dir=str(data_dir), split=split,
        run_dir=str(run_dir)))
    folder = root / "labelled"
    write_folder(folder, FOLDER)
    (folder / "sad" / "broken.jpg").write_bytes(b"not a picture at all")
    (folder / "sad" / "notes.txt").write_text("not an image")
    return {"model": model_path, "folder": folder, "run_dir": run_dir, "root": root}


def copy_model(model_path, to_dir):
    to_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, to_dir / model_path.name)
    shutil.copy(record.sidecar_path(model_path), record.sidecar_path(to_dir / model_path.name))
    return to_dir / model_path.name


def run_json(capsys, argv) -> dict:
    evaluate.main([*argv, "--json"])
    return json.loads(capsys.readouterr().out)


def error_of(argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    return str(exit_info.value.code)


def test_folder_gives_exact_confusion_matrix_precision_recall_and_lists_skipped(forced, tmp_path, capsys):
    out = tmp_path / "report"
    report = run_json(capsys, ["--model", str(forced["model"]), "--data", str(forced["folder"]),
                               "--out", str(out)])
    m = report["metrics"]
    assert m["confusion_matrix"] == [[3, 1], [2, 3]]
    assert m["confusion_matrix_normalized"] == [[0.75, 0.25], [0.4, 0.6]]
    assert m["per_class"]["happy"]["precision"] == pytest.approx(3 / 5)
    assert m["per_class"]["happy"]["recall"] == pytest.approx(3 / 4)
    assert m["per_class"]["sad"]["precision"] == pytest.approx(3 / 4)
    assert m["per_class"]["sad"]["recall"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(6 / 9)
    # ROC-AUC = share of (sad, happy) pairs where the sad image has the higher red value.
    pairs = [(s > h) for s in FOLDER["sad"] for h in FOLDER["happy"]]
    assert m["roc_auc"] == pytest.approx(np.mean(pairs))
    assert report["scored"] == 9
    skipped = {item["path"].split("/")[-1]: item["reason"] for item in report["skipped"]}
    assert set(skipped) == {"broken.jpg", "notes.txt"} and all(skipped.values())
    # Worst mistakes, highest loss first: happy called sad at p(sad)=0.8, then sad at 0.4, then sad at 0.45.
    assert [w["path"].split("/")[-1] for w in report["worst_mistakes"]] == ["3_204.png", "2_102.png", "3_115.png"]
    assert report["worst_mistakes"][0]["predicted"] == "sad"
    for name in ("report.json", "index.html", "confusion_matrix.png", "roc.png", "pr.png", "thresholds.png",
                 "mistakes.png"):
        assert (out / name).stat().st_size > 0
    page = (out / "index.html").read_text()
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    assert json.loads((out / "report.json").read_text())["metrics"]["confusion_matrix"] == [[3, 1], [2, 3]]

    log_dir = forced["run_dir"] / "evaluate-labelled"
    assert report["tensorboard"] == str(log_dir)
    events = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    plugins = {tag: events.SummaryMetadata(tag).plugin_data.plugin_name for tag in events.Tags()["tensors"]}
    assert plugins["evaluate/accuracy"] == "scalars"
    assert plugins["evaluate/confusion_matrix"] == plugins["evaluate/mistakes"] == "images"
    assert "pr_curves" in plugins.values()
    accuracy = tensor_util.make_ndarray(events.Tensors("evaluate/accuracy")[-1].tensor_proto)
    assert accuracy == pytest.approx(6 / 9, abs=1e-6)


def test_scoring_the_photos_the_model_trained_on_says_so(forced, tmp_path, capsys):
    model = str(forced["model"])
    assert run_json(capsys, ["--model", model, "--data", str(forced["folder"]), "--out", str(tmp_path / "a"),
                             "--no-tensorboard"])["seen_in_training"] == 0
    data_dir = Path(record.read(forced["model"]).data_dir)  # its train, validation and test files side by side
    evaluate.main(["--model", model, "--data", str(data_dir), "--out", str(tmp_path / "b"), "--no-tensorboard"])
    out = capsys.readouterr().out
    # Its 2 training files, and a validation file with the bytes of one of them (sad, red 255).
    assert "warning: the model trained on 3 of these 8 images" in out
    assert "the model trained on 3 of these 8 images" in (tmp_path / "b" / "index.html").read_text()
    copy = shutil.copytree(data_dir, tmp_path / "copy", symlinks=False)  # the same photos under other names
    for path in copy.rglob("*.png"):
        path.rename(path.with_name("renamed_" + path.name))
    assert run_json(capsys, ["--model", model, "--data", str(copy), "--out", str(tmp_path / "c"),
                             "--no-tensorboard"])["seen_in_training"] == 3


def test_terminal_table(forced, tmp_path, capsys):
    evaluate.main(["--model", str(forced["model"]), "--data", str(forced["folder"]), "--out", str(tmp_path),
                   "--no-tensorboard"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].endswith("on labelled: 9 images scored, 2 skipped")
    assert [line.split()[:3] for line in lines if line.split()[:1] in (["happy"], ["sad"])][-2:] == [
        ["happy", "3", "1"], ["sad", "2", "3"]]
    assert "broken.jpg" in captured.err


def test_default_is_the_models_own_test_partition(forced, tmp_path, capsys):
    report = run_json(capsys, ["--model", str(forced["model"]), "--out", str(tmp_path), "--no-tensorboard"])
    assert report["evaluated"] == "test"
    assert report["scored"] == 2 and report["metrics"]["confusion_matrix"] == [[1, 0], [1, 0]]


def test_class_mismatch_empty_folder_and_empty_class_are_one_line_errors(forced, tmp_path):
    model = str(forced["model"])
    write_png(tmp_path / "odd" / "happy" / "a.png", 10)
    write_png(tmp_path / "odd" / "angry" / "b.png", 10)
    message = error_of(["--model", model, "--data", str(tmp_path / "odd")])
    assert message.startswith("happysad.evaluate: error: ") and "angry" in message and "do not match" in message
    (tmp_path / "empty").mkdir()
    message = error_of(["--model", model, "--data", str(tmp_path / "empty")])
    assert "has no class folders" in message and "happy, sad" in message
    write_png(tmp_path / "half" / "happy" / "a.png", 10)
    (tmp_path / "half" / "sad").mkdir()
    assert "has no images" in error_of(["--model", model, "--data", str(tmp_path / "half")])
    assert "not found" in error_of(["--model", str(tmp_path / "none.h5")])
    assert "\n" not in message


def test_a_stored_threshold_is_used_by_predict_which_says_why_a_label_has_p_below_half(forced, tmp_path, capsys):
    model_path = copy_model(forced["model"], tmp_path / "models")
    probe = tmp_path / "probe.png"
    write_png(probe, 153)  # p(sad) = 0.6: sad at the default 0.5, happy once the threshold is above 0.6

    def predicted_label():
        predict.main([str(probe), "--model", str(model_path), "--json"])
        return json.loads(capsys.readouterr().out)["label"]

    assert predicted_label() == "sad"
    report = run_json(capsys, ["--model", str(model_path), "--store-threshold", "0.7", "--out",
                               str(tmp_path / "r"), "--no-tensorboard"])
    stored = record.read(model_path)
    assert stored.threshold == report["threshold"] == 0.7 and report["stored_threshold"]["method"].startswith("given")
    assert stored.class_names == ["happy", "sad"] and stored.split == record.read(forced["model"]).split
    assert predicted_label() == "happy"
    predict.main([str(probe), "--model", str(model_path)])  # happy with p(happy) = 0.4: the line says why
    assert capsys.readouterr().out.strip().startswith(f"{probe}: happy (p=0.40; sad needs p >= 0.70)")
    for wrong in ("1.5", "best-f1"):
        with pytest.raises(SystemExit):
            evaluate.main(["--model", str(model_path), "--store-threshold", wrong])


def test_a_threshold_is_stored_only_once_the_report_is_written(forced, tmp_path):
    model_path = copy_model(forced["model"], tmp_path / "models")
    record.update(model_path, split={})  # trained on every photo: no test partition to score
    before = record.sidecar_path(model_path).read_text()
    assert "lists no test images" in error_of(["--model", str(model_path), "--store-threshold", "0.7"])
    assert record.sidecar_path(model_path).read_text() == before


def test_multiclass_uses_argmax_and_refuses_a_threshold(tmp_path, capsys):
    folder = tmp_path / "colours"
    for name, bgr in (("blue", (255, 0, 0)), ("green", (0, 255, 0)), ("red", (0, 0, 255))):
        for i in range(2):
            (folder / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / name / f"{i}.png"), np.full((SIZE, SIZE, 3), bgr, np.uint8))
    cv2.imwrite(str(folder / "red" / "2.png"), np.full((SIZE, SIZE, 3), (0, 255, 0), np.uint8))  # looks green
    model_path = tmp_path / "colour.h5"
    record.save(forced_model(3), model_path,
                record.Record(class_names=["blue", "green", "red"], preprocessing=images.Preprocessing(SIZE)))
    report = run_json(capsys, ["--model", str(model_path), "--data", str(folder), "--out", str(tmp_path / "r")])
    assert report["metrics"]["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 1, 2]]
    assert report["threshold"] is None and "roc_auc" not in report["metrics"]
    assert report["metrics"]["per_class"]["red"]["accuracy"] == pytest.approx(2 / 3)
    assert "two-class" in error_of(["--model", str(model_path), "--store-threshold", "0.4"])


def test_agrees_with_training_on_the_trained_models_test_partition(trained, tmp_path, capsys):
    report = run_json(capsys, ["--model", str(trained["model"]), "--out", str(tmp_path), "--no-tensorboard"])
    at_training = record.read(trained["model"]).metrics["test"]
    assert report["scored"] == at_training["count"]
    assert report["metrics"]["confusion_matrix"] == at_training["confusion_matrix"]
    assert report["metrics"]["log_loss"] == pytest.approx(at_training["log_loss"], abs=1e-4)
    assert (tmp_path / "training_curves.png").stat().st_size > 0


def test_training_curves_come_from_the_record_after_the_run_folder_is_gone(trained, tmp_path, capsys):
    model_path = tmp_path / "models" / "happysad.h5"
    model_path.parent.mkdir()
    model_path.write_bytes(trained["model"].read_bytes())
    record.sidecar_path(model_path).write_bytes(record.sidecar_path(trained["model"]).read_bytes())
    saved = record.update(model_path, run_dir=str(tmp_path / "deleted-run"))
    assert len(saved.history["loss"]) == len(saved.metrics["epoch_seconds"])
    run_json(capsys, ["--model", str(model_path), "--out", str(tmp_path / "out"), "--no-tensorboard"])
    assert (tmp_path / "out" / "training_curves.png").stat().st_size > 0


def test_a_record_of_an_unknown_format_version_is_a_clear_error(trained, tmp_path):
    model_path = tmp_path / "happysad.h5"
    model_path.write_bytes(trained["model"].read_bytes())
    values = json.loads(record.sidecar_path(trained["model"]).read_text())
    record.sidecar_path(model_path).write_text(json.dumps({**values, "format_version": record.FORMAT_VERSION + 1}))
    assert "upgrade happysad" in error_of(["--model", str(model_path)])


@pytest.mark.parametrize("argv, message", [
    (["--mistakes", "-1"], "--mistakes must be 0 or more, got -1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_option_values_out_of_range_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(argv)
    assert f"error: {message} (--help lists the options)" in capsys.readouterr().err


def test_a_cross_validated_model_says_why_it_has_no_validation_or_test_partition(forced, tmp_path):
    model_path = copy_model(forced["model"], tmp_path / "models")
    record.update(model_path, split={"train": record.read(model_path).split["train"], "validation": [], "test": []},
                  metrics={"cross_validation": {"accuracy": 0.7}})
    assert "train with --holdout F" in error_of(["--model", str(model_path)])
    message = error_of(["--model", str(model_path), "--partition", "validation"])
    assert "lists no validation images (a cross-validated model has no validation partition" in message
    assert "--holdout" not in message
