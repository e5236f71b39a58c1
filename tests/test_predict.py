"""predict uses exactly the training preprocessing and the record's labels."""
import json
import shutil

import cv2
import keras
import numpy as np
import pytest

from happysad import classifier, data, explain, images, predict, record


def run_predict(args, capsys):
    code = 0
    try:
        predict.main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_probability_equals_the_model_on_the_pipelines_own_tensor(trained, capsys):
    saved = record.read(trained["model"])
    paths = [str(trained["data"] / p) for p in saved.split["test"][:4]]
    code, out, _ = run_predict([*paths, "--model", str(trained["model"]), "--json"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == paths

    network = keras.models.load_model(trained["model"], compile=False)
    files = data.Files(paths, [0] * len(paths))
    batch, _ = next(iter(data.make_dataset(files, saved.preprocessing, 8, binary=True)))
    p_second = network(batch, training=False).numpy().reshape(-1)
    for row, p in zip(rows, p_second):
        expected_label = saved.class_names[int(p >= saved.threshold)]
        assert row["label"] == expected_label
        assert row["probability"] == pytest.approx(p if expected_label == saved.class_names[1] else 1 - p, abs=1e-5)
        assert row["probabilities"][saved.class_names[1]] == pytest.approx(p, abs=1e-5)


def red_minus_blue_model(tmp_path):
    """A model that says 'red' when the image's red channel outweighs blue: BGR input flips its answer."""
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.layers[-1].set_weights([np.array([[-20.0], [0.0], [20.0]]), np.zeros(1)])
    path = tmp_path / "colour.h5"
    record.save(model, path, record.Record(class_names=["red", "blue"], preprocessing=images.Preprocessing(8)))
    return path


def test_rgb_not_bgr(tmp_path, capsys):
    model_path = red_minus_blue_model(tmp_path)
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 2] = 255  # OpenCV arrays are BGR: this file is pure red
    cv2.imwrite(str(tmp_path / "red.png"), red)
    cv2.imwrite(str(tmp_path / "blue.png"), red[..., ::-1])
    code, out, _ = run_predict([str(tmp_path / "red.png"), str(tmp_path / "blue.png"), "--model",
                                str(model_path)], capsys)
    assert code == 0
    assert out.splitlines()[0].startswith(f"{tmp_path / 'red.png'}: red (p=1.00)")
    assert out.splitlines()[1].startswith(f"{tmp_path / 'blue.png'}: blue (p=1.00)")


def test_unreadable_files_are_reported_and_the_rest_still_predicted(trained, tmp_path, capsys):
    good = trained["data"] / record.read(trained["model"]).split["test"][0]
    (tmp_path / "notes.jpg").write_text("not an image")
    code, out, err = run_predict([str(good), str(tmp_path / "notes.jpg"), str(tmp_path / "missing.jpg"),
                                  "--model", str(trained["model"])], capsys)
    assert code == 1
    assert out.startswith(f"{good}: ")
    assert "notes.jpg: not an image" in err and "missing.jpg: no such file" in err
    assert "Traceback" not in err
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(good, folder / "good.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # in a folder too: said, not passed over
    code, out, err = run_predict([str(folder), "--model", str(trained["model"])], capsys)
    assert code == 1 and out.startswith(f"{folder / 'good.jpg'}: ") and "gone.jpg: a link to nothing" in err


def test_folder_argument_and_missing_model(trained, tmp_path, capsys):
    code, out, _ = run_predict([str(trained["data"] / "sad"), "--model", str(trained["model"])], capsys)
    assert code == 0 and len(out.splitlines()) == len(list((trained["data"] / "sad").iterdir()))
    code, _, _ = run_predict([str(tmp_path), "--model", str(tmp_path / "none.h5")], capsys)
    assert "not found" in str(code) and "happysad.train" in str(code)
    code, _, _ = run_predict([str(tmp_path), "--model", str(trained["model"].parent / "none.h5")], capsys)
    assert f"holds {trained['model'].name}" in str(code)


def test_a_folder_is_scored_in_batches_without_its_hidden_files(trained, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(trained["data"] / "sad", folder)
    hidden = folder / ".quarantine" / "corrupt" / "sad"
    hidden.mkdir(parents=True)
    (hidden / "broken.jpg").write_bytes(b"clean put this aside")
    (folder / "._sad_000.jpg").write_bytes(b"macOS metadata")
    (folder / "face.webp").write_bytes(b"a format training does not read")
    whole = run_predict([str(folder), "--model", str(trained["model"]), "--json"], capsys)
    in_threes = run_predict([str(folder), "--model", str(trained["model"]), "--json", "--batch-size", "3"], capsys)
    assert whole[0] == in_threes[0] == 0 and "Traceback" not in whole[2] + in_threes[2]
    assert "note: 1 file(s) in the folders are not in a format training reads" in whole[2]
    assert "face.webp" in whole[2] and "broken.jpg" not in whole[2]
    rows = [json.loads(line) for line in whole[1].splitlines()]
    assert len(rows) == len([p for p in folder.iterdir() if p.suffix == ".jpg" and not p.name.startswith(".")])
    batched = [json.loads(line) for line in in_threes[1].splitlines()]
    assert [(r["path"], r["label"]) for r in rows] == [(r["path"], r["label"]) for r in batched]
    assert [r["probability"] for r in rows] == pytest.approx([r["probability"] for r in batched], abs=1e-5)


def test_explain_writes_each_heatmap_beside_and_never_over_the_users_files(trained, tmp_path, capsys):
    saved = record.read(trained["model"])
    paths = [trained["data"] / p for p in saved.split["test"][:3]]
    out_dir = tmp_path / "explained"
    out_dir.mkdir()
    taken = out_dir / f"{paths[0].stem}.png"
    taken.write_bytes(b"the user's own picture")
    code, out, _ = run_predict([*map(str, paths), "--model", str(trained["model"]), "--json", "--explain",
                                str(out_dir)], capsys)
    assert code == 0 and taken.read_bytes() == b"the user's own picture"
    labels = [json.loads(line)["label"] for line in out.splitlines()]
    model = classifier.load(trained["model"])
    pixels = np.stack([model.load_image(p) for p in paths])
    want = [explain.overlay(picture, heatmap) for picture, heatmap in zip(pixels, model.heatmaps(pixels, labels))]
    written = [out_dir / f"{paths[0].stem}-1.png"] + [out_dir / f"{p.stem}.png" for p in paths[1:]]
    for path, expected in zip(written, want):
        np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], expected)
    assert len(list(out_dir.iterdir())) == 4
