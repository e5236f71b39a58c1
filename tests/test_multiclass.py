"""Three classes end to end: softmax model, predict --top-k / --category-names, evaluate, all from the record."""
import json

import numpy as np
import pytest
from conftest import PARTITIONS, PLAIN_CNN

from happysad import classifier, evaluate, predict, record, sample, train

pytestmark = pytest.mark.slow  # whole module: its fixtures train or start a server (tens of seconds)

CLASSES = ("happy", "sad", "neutral")


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    sample.write_faces(root / "data", per_class=100, size=48, seed=11, classes=CLASSES)
    model_path = root / "models" / "happysad.h5"
    train.main(["--data", str(root / "data"), "--epochs", "25", "--image-size", "48", "--batch-size", "16", *PLAIN_CNN,
                *PARTITIONS,
                "--model", str(model_path), "--logdir", str(root / "logs"), "--run-name", "three", "--seed", "5"])
    return {"model": model_path, "data": root / "data", "root": root}


def run(main, args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_three_classes_train_a_softmax_with_labels_from_the_record(three_classes):
    saved = record.read(three_classes["model"])
    assert saved.class_names == sorted(CLASSES)  # folder order, not the order they were generated in
    assert not saved.binary
    model = classifier.load(three_classes["model"])
    assert model.network.output_shape == (None, 3)
    paths = [three_classes["data"] / p for p in saved.split["test"]]
    probabilities = model.probabilities(np.stack([model.load_image(p) for p in paths]))
    assert probabilities.shape == (len(paths), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    truth = [saved.class_names.index(p.parent.name) for p in paths]
    # It learnt the three expressions: well above chance (1/3) on images it never saw, as its record says.
    accuracy = np.mean(probabilities.argmax(axis=1) == truth)
    assert accuracy > 0.6 and accuracy == pytest.approx(saved.metrics["test"]["accuracy"])
    assert np.asarray(saved.metrics["test"]["confusion_matrix"]).sum() == len(paths)


def test_predict_top_k_ranks_every_class_by_the_models_probabilities(three_classes, capsys):
    saved = record.read(three_classes["model"])
    paths = [str(three_classes["data"] / p) for p in saved.split["test"][:5]]
    code, out, _ = run(predict.main, [*paths, "--model", str(three_classes["model"]), "--json", "--top-k", "3"],
                       capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    model = classifier.load(three_classes["model"])
    expected = model.probabilities(np.stack([model.load_image(p) for p in paths]))
    for row, p in zip(rows, expected):
        ranked = [saved.class_names[i] for i in np.argsort(-p)]
        assert [entry["label"] for entry in row["top_k"]] == ranked
        assert [entry["probability"] for entry in row["top_k"]] == pytest.approx(sorted(p, reverse=True), abs=1e-5)
        assert row["label"] == ranked[0] == row["top_k"][0]["label"]


def test_top_k_text_uses_category_names_and_keeps_unnamed_folders(three_classes, tmp_path, capsys):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"happy": "Happy face", "sad": "Sad face"}))
    image = str(next((three_classes["data"] / "neutral").iterdir()))
    code, out, _ = run(predict.main, [image, "--model", str(three_classes["model"]), "--top-k", "2",
                                      "--category-names", str(names)], capsys)
    assert code == 0
    text = out
    listed = out.strip().split("  [")[0].split(": ", 1)[1].split(", ")  # the marks' notes follow in brackets
    assert len(listed) == 2
    shown = {entry.rsplit(" ", 1)[0] for entry in listed}
    assert shown <= {"Happy face", "Sad face", "neutral"}

    code, out, _ = run(predict.main, [image, "--model", str(three_classes["model"]), "--json", "--top-k", "9",
                                      "--category-names", str(names)], capsys)
    row = json.loads(out)
    assert len(row["top_k"]) == 3  # k beyond the number of classes lists them all
    mapping = {"happy": "Happy face", "sad": "Sad face", "neutral": "neutral"}
    assert all(entry["name"] == mapping[entry["label"]] for entry in row["top_k"])
    assert row["name"] == mapping[row["label"]]
    assert row["notes"] and all(f"  [{note}]" in text for note in row["notes"])  # --top-k keeps the marks


@pytest.mark.parametrize("content", ["not json", '["happy", "sad"]', '{"happy": 1}'])
def test_bad_category_names_file_is_one_line_error(three_classes, tmp_path, capsys, content):
    names = tmp_path / "names.json"
    names.write_text(content)
    image = str(next((three_classes["data"] / "happy").iterdir()))
    code, out, _ = run(predict.main, [image, "--model", str(three_classes["model"]), "--category-names",
                                      str(names)], capsys)
    assert code.startswith("happysad.predict: error: ") and "\n" not in code
    assert out == ""


def test_evaluate_scores_three_classes_as_predict_does(three_classes, capsys):
    saved = record.read(three_classes["model"])
    code, out, _ = run(evaluate.main, ["--model", str(three_classes["model"]), "--json", "--no-tensorboard",
                                       "--out", str(three_classes["root"] / "report")], capsys)
    assert code == 0
    report = json.loads(out)
    matrix = np.array(report["metrics"]["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == len(saved.split["test"])

    paths = [str(three_classes["data"] / p) for p in saved.split["test"]]
    code, out, _ = run(predict.main, [*paths, "--model", str(three_classes["model"]), "--json"], capsys)
    predicted = [saved.class_names.index(json.loads(line)["label"]) for line in out.splitlines()]
    truth = [saved.class_names.index(p.split("/")[0]) for p in saved.split["test"]]
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (truth, predicted), 1)
    np.testing.assert_array_equal(matrix, expected)
