"""runs lists and compares the record.json files train leaves in each run folder."""
import json

import pytest

from happysad import images, record, runs


def write_run(logdir, name, created, seconds=60.0, test_accuracy=None, val_accuracy=0.5, cv_accuracy=None, **hyper):
    folder = logdir / name
    folder.mkdir(parents=True)
    metrics = {"final_epoch": {"loss": 0.3, "accuracy": 0.9, "val_loss": 0.4, "val_accuracy": val_accuracy},
               "train_seconds": seconds, "epoch_seconds": [seconds / 3] * 3}
    if test_accuracy is not None:
        metrics["test"] = {"accuracy": test_accuracy, "f1": test_accuracy - 0.01, "per_class": {}}
    if cv_accuracy is not None:  # a head cross-validated on stored features: no epochs
        metrics = {"cross_validation": {"accuracy": cv_accuracy, "folds": 5, "per_class": {}}, "train_seconds": seconds}
    hyperparameters = {"epochs": 3, "batch_size": 32, "image_size": 64, "learning_rate": 1e-3, "seed": 1,
                       "arch": "cnn", **hyper}
    run_record = record.Record(class_names=["happy", "sad"],
                               preprocessing=images.Preprocessing(hyperparameters.pop("image_size")),
                               seed=hyperparameters.pop("seed"), metrics=metrics, hyperparameters=hyperparameters,
                               created=created)
    (folder / "record.json").write_text(run_record.to_json())
    return folder


def run_json(capsys, argv) -> dict:
    runs.main([*argv, "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def logdir(tmp_path):
    logs = tmp_path / "logs"
    write_run(logs, "old", "2024-01-01T10:00:00", test_accuracy=0.80, val_accuracy=0.9)
    write_run(logs, "best", "2024-01-02T10:00:00", seconds=120, test_accuracy=0.95, val_accuracy=0.7,
              learning_rate=1e-4)
    write_run(logs, "new", "2024-01-03T10:00:00", test_accuracy=0.85, val_accuracy=0.8, batch_size=16)
    (logs / "crashed").mkdir()
    return logs


def test_lists_newest_first_and_marks_the_best_by_validation_never_by_test_accuracy(logdir, capsys):
    listing = run_json(capsys, ["--logdir", str(logdir)])
    assert [run["name"] for run in listing["runs"]] == ["new", "best", "old"]
    # "best" has the highest test accuracy, "old" the highest validation accuracy: choosing spends no test
    assert listing["best"] == "old" and listing["best_by"] == "cross-validated or validation accuracy"
    assert listing["unfinished"] == ["crashed"]
    assert listing["tensorboard"] == f"tensorboard --logdir {logdir}"
    best = listing["runs"][1]
    assert best["started"] == "2024-01-02T09:58:00" and best["seconds"] == 120
    assert best["hyperparameters"]["learning_rate"] == 1e-4 and best["test"]["accuracy"] == 0.95
    assert best["validation"]["accuracy"] == 0.7

    runs.main(["--logdir", str(logdir)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["run", "started"]
    assert [line.split()[0] for line in out[1:4]] == ["new", "best", "*"] and out[3].split()[1] == "old"
    assert "* best by cross-validated or validation accuracy: old" in out
    assert f"view them: tensorboard --logdir {logdir}" in out


def test_a_cross_validated_run_is_ranked_by_its_out_of_fold_accuracy(logdir, capsys):
    write_run(logdir, "folds", "2024-01-04T10:00:00", cv_accuracy=0.91)
    listing = run_json(capsys, ["--logdir", str(logdir)])
    assert listing["best"] == "folds" and listing["runs"][0]["cross_validation"]["accuracy"] == 0.91
    write_run(logdir, "worse", "2024-01-05T10:00:00", cv_accuracy=0.88)
    assert run_json(capsys, ["--logdir", str(logdir)])["best"] == "folds"


def test_compare_shows_metrics_side_by_side_and_only_differing_hyperparameters(logdir, capsys):
    result = run_json(capsys, ["--logdir", str(logdir), "--compare", "best", "new"])
    assert result["runs"] == ["best", "new"]
    assert result["metrics"]["test accuracy"] == [0.95, 0.85]
    assert result["metrics"]["val accuracy"] == [0.7, 0.8]
    assert result["differing_hyperparameters"] == {"batch_size": [32, 16], "learning_rate": [1e-4, 1e-3]}

    runs.main(["--logdir", str(logdir), "--compare", "best", str(logdir / "new")])
    out = capsys.readouterr().out
    assert "test accuracy   0.950  0.850" in out
    assert "batch_size" in out and "epochs" not in out



def test_compare_names_the_calibration_as_train_printed_it(logdir, capsys):
    write_run(logdir, "platt", "2024-01-04T10:00:00", calibration={"scale": 0.8, "shift": 0.19})
    write_run(logdir, "plain", "2024-01-05T10:00:00", calibration={"scale": 1.0, "shift": 0.0})
    runs.main(["--logdir", str(logdir), "--compare", "platt", "plain"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("calibration"))
    assert row.split("  ")[0] == "calibration" and "logit x 0.80 +0.19" in row and row.rstrip().endswith("none")


def test_errors_are_one_line(logdir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        runs.main(["--logdir", str(logdir), "--compare", "best", "nope"])
    assert str(exit_info.value.code).startswith("happysad.runs: error: no run 'nope'")
    with pytest.raises(SystemExit) as exit_info:
        runs.main(["--logdir", str(tmp_path / "missing")])
    assert "does not exist" in str(exit_info.value.code)


def test_lists_a_real_training_run(trained, capsys):
    listing = run_json(capsys, ["--logdir", str(trained["logdir"])])
    (run,) = listing["runs"]
    trained_record = record.read(trained["model"])
    assert run["name"] == "fixture" and run["epochs_run"] == len(trained_record.metrics["epoch_seconds"])
    assert run["test"]["accuracy"] == trained_record.metrics["test"]["accuracy"]
    assert run["hyperparameters"] == trained_record.hyperparameters


def test_a_run_whose_record_cannot_be_read_is_named_and_the_others_are_still_listed(logdir, capsys):
    (logdir / "damaged").mkdir()
    (logdir / "damaged" / "record.json").write_text("{ truncated")
    listing = run_json(capsys, ["--logdir", str(logdir)])
    assert [run["name"] for run in listing["runs"]] == ["new", "best", "old"]
    assert [item["run"] for item in listing["unreadable"]] == ["damaged"]
    runs.main(["--logdir", str(logdir)])
    captured = capsys.readouterr()
    assert "skipped damaged: cannot read" in captured.err and "best" in captured.out
