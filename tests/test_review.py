"""happysad.review: out-of-fold scores, the ranking rules, the report, and moves that clean --restore undoes.

The ranking is tested on feature vectors made to order (two clusters, a few swapped labels, one vector far from
both), because a backbone with random weights gives features too weak to tell the sample faces apart. The same
made-to-order vectors stand in for the backbone where a test needs to know which files are suspects; random
stand-in weights (as in test_features) run the real backbone path; real ImageNet weights from ../shared/weights,
where present, show that flipped generated faces rank near the top.
"""
import base64
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_WEIGHTS

from happysad import crossval, data, features, images, marks, quarantine, review, sample

SIZE = 32
FAST = ["--folds", "3"]


def clusters(labels, seed=0, dim=64):
    """A vector per label: its own direction (three, 0 and 1 the classes, 2 neither) times 8, plus noise."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(99).normal(0, 1, (3, dim))
    directions *= 8 / np.linalg.norm(directions, axis=1, keepdims=True)
    return (directions[np.asarray(labels)] + rng.normal(0, 1, (len(labels), dim))).astype(np.float32)


@pytest.fixture
def made_to_order(monkeypatch):
    """Replace the backbone by vectors that follow the file name: sample faces are named <class>_NNN, so a face
    moved into the other folder keeps its true class's vector; a name without either gets one far from both."""
    def vectors(config, files, digests):
        names = [Path(path).name for path in files.paths]
        return {"mobilenet025": clusters([0 if "happy_" in name else 1 if "sad_" in name else 2
                                          for name in names])}, {"mobilenet025": 0}

    monkeypatch.setattr(features, "of_backbones", vectors)
    monkeypatch.setattr(review, "suspect_heatmaps", lambda *args: {})  # no network behind these vectors


def faces(folder, per_class=12, seed=5):
    sample.write_faces(folder, per_class=per_class, size=SIZE, seed=seed)
    return folder


def run(folder, out, *extra, weights="unused.h5"):
    return review.review(review.parse_args([
        str(folder), "--arch", "mobilenet025", "--weights", str(weights), "--image-size", str(SIZE),
        "--html", str(out / "review.html"), "--png", str(out / "review.png"), "--json", str(out / "review.json"),
        *FAST, *extra]))


def tree(folder) -> dict:
    """sha256 of every file under folder, by relative path."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(folder).rglob("*")) if path.is_file()}


def test_a_class_too_small_for_the_folds_is_named():
    labels = np.array([0] * 20 + [1] * 3)
    vectors = crossval.unit(clusters(labels))
    with pytest.raises(data.DataError, match="class sad has 3 image"):
        review.rank({"mobilenet": vectors}, labels, list(range(len(labels))), 2, n_folds=5,
                    class_names=["happy", "sad"])


def test_flipped_labels_rank_first_and_a_far_vector_fits_no_class():
    labels = np.array([0] * 40 + [1] * 40)
    vectors = clusters(np.r_[labels, 2])  # the last one like neither class
    flipped = [3, 17, 52]
    given = np.r_[labels, 0]
    given[flipped] = 1 - given[flipped]
    ranking = review.rank({"mobilenet": crossval.unit(vectors)}, given, list(range(len(given))), 2, n_folds=5)
    wrong = [s for s in ranking.suspects if s.kind == "wrong-folder"]
    assert sorted(s.index for s in wrong) == flipped
    assert all(s.suggested == labels[s.index] and s.confidence > 0.8 for s in wrong)
    lost = [s for s in ranking.suspects if s.kind == "no-class"]
    assert [s.index for s in lost] == [80] and lost[0].why.startswith("far from every class")
    assert ranking.distances[80] > 1.5 * ranking.far_limit and ranking.probabilities.shape == (81, 2)


def test_unsure_fits_no_class_and_alike_pictures_are_not_far():
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.95, 0.05]])
    distances = np.array([0.10, 0.10, 0.10, 0.1003])  # all alike: the farthest is no outlier
    ranking = review.Ranking(probabilities, distances, marks.far_limit(distances), np.zeros(4, int), 1.0, "mobilenet")
    suspects = review.find_suspects(ranking, np.array([0, 0, 0, 1]))
    assert [(s.index, s.kind) for s in suspects] == [(3, "wrong-folder"), (2, "wrong-folder"), (1, "no-class")]
    assert suspects[2].why.startswith("unsure")


@pytest.mark.slow
def test_page_has_a_row_and_a_thumbnail_per_suspect_and_a_second_review_reads_stored_features(
        tmp_path, weights_file, monkeypatch, capsys):
    folder = faces(tmp_path / "data")
    report = run(folder, tmp_path, "--cache", f"disk:{tmp_path / 'cache'}", weights=weights_file)
    page = (tmp_path / "review.html").read_text()
    assert report["suspects"], "random features should contradict some labels"
    assert page.count('<tr class="suspect">') == len(report["suspects"])
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    wrong = [s for s in report["suspects"] if s["kind"] == "wrong-folder"]
    assert wrong and page.count('alt="evidence for ') == min(len(wrong), 20)  # the heatmaps of the first --top
    assert len(thumbnails) == len(report["suspects"]) + min(len(wrong), 20)
    assert all(base64.b64decode(data).startswith(b"\xff\xd8\xff") for data in thumbnails)
    assert (tmp_path / "review.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((tmp_path / "review.json").read_text())
    assert len(saved["images"]) == 24 and saved["suspects"] == report["suspects"]
    order = [s["confidence"] for s in saved["suspects"] if s["kind"] == "wrong-folder"]
    assert order == sorted(order, reverse=True)
    out = capsys.readouterr().out
    assert "mobilenet025 features: 24 computed, 0 from the store" in out
    assert re.search(r"took .*features .*cross-validation", out)

    monkeypatch.setattr(features, "compute", lambda *args, **kwargs: 1 / 0)
    monkeypatch.setattr(features.models, "pooled_output", lambda *args: 1 / 0)  # no feature extractor built
    again = run(folder, tmp_path, "--cache", f"disk:{tmp_path / 'cache'}", weights=weights_file)
    assert "mobilenet025 features: 0 computed, 24 from the store" in capsys.readouterr().out
    assert again["images"] == report["images"]


def test_a_folder_with_no_suspects_says_so(tmp_path, made_to_order, capsys):
    folder = faces(tmp_path / "data")
    report = run(folder, tmp_path)
    assert report["suspects"] == [] and report["out_of_fold_accuracy"] == 1.0
    assert "no suspects" in capsys.readouterr().out
    assert "No suspects" in (tmp_path / "review.html").read_text()
    assert (tmp_path / "review.png").exists()


def test_moves_go_through_cleans_manifest_and_restore_undoes_them(tmp_path, made_to_order):
    folder = faces(tmp_path / "data")
    (folder / "sad" / "sad_003.jpg").rename(folder / "happy" / "sad_003.jpg")
    faces(tmp_path / "other", seed=9)  # another picture of that name takes its place
    (tmp_path / "other" / "sad" / "sad_003.jpg").rename(folder / "sad" / "sad_003.jpg")
    (folder / "happy" / "happy_004.jpg").rename(folder / "sad" / 'a <b>&"odd" name happy_004.jpg')
    (tmp_path / "other" / "happy" / "happy_000.jpg").rename(folder / "happy" / "notes.jpg")  # like no class
    before = tree(folder)

    report = run(folder, tmp_path, "--move-to-suggested", "--quarantine")
    page = (tmp_path / "review.html").read_text()
    assert "&lt;b&gt;&amp;&quot;odd&quot;" in page and "<b>&" not in page
    moved = {move["from"]: move["to"] for move in report["moved"]}
    assert moved == {"happy/sad_003.jpg": "sad/sad_003-1.jpg",
                     'sad/a <b>&"odd" name happy_004.jpg': 'happy/a <b>&"odd" name happy_004.jpg',
                     "happy/notes.jpg": ".quarantine/review-no-class/happy/notes.jpg"}
    after = tree(folder)
    assert after["sad/sad_003.jpg"] == before["sad/sad_003.jpg"]  # not overwritten
    assert after["sad/sad_003-1.jpg"] == before["happy/sad_003.jpg"]
    records = quarantine.read_manifest(folder / quarantine.QUARANTINE / quarantine.MANIFEST)
    entries = [(r["original"], r["quarantine"], r["reason"]) for r in records]
    # the relabels (most confident first: an order of two near-certain suspects), then the quarantine
    assert sorted(entries[:2]) == [
        ("happy/sad_003.jpg", "sad/sad_003-1.jpg", "review-relabel"),
        ('sad/a <b>&"odd" name happy_004.jpg', 'happy/a <b>&"odd" name happy_004.jpg', "review-relabel")]
    assert entries[2] == ("happy/notes.jpg", ".quarantine/review-no-class/happy/notes.jpg", "review-no-class")
    assert all(r["sha256"] == before[r["original"]] and r["converted"] is None for r in records)

    restored = quarantine.restore(folder)
    assert len(restored.restored) == 3 and not restored.skipped
    assert tree(folder) == before



def test_an_undecodable_file_is_one_line_naming_it(tmp_path, weights_file):
    folder = faces(tmp_path / "data", per_class=4)
    broken = folder / "sad" / "broken.jpg"
    broken.write_bytes(next((folder / "sad").iterdir()).read_bytes()[:200])
    with pytest.raises(SystemExit) as exited:
        review.main([str(folder), "--arch", "mobilenet025", "--weights", str(weights_file), "--image-size",
                     str(SIZE), "--cache", "none", "--html", str(tmp_path / "r.html"), "--png", str(tmp_path / "r.png"),
                     *FAST])
    message = str(exited.value)
    assert message.startswith("happysad.review: error: 1 file(s) cannot be decoded") and "\n" not in message
    assert str(broken) in message and "happysad.clean" in message
    broken.unlink()
    (folder / "sad" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(SystemExit) as exited:
        review.main([str(folder), "--arch", "mobilenet025", "--weights", str(weights_file), "--image-size",
                     str(SIZE), "--cache", "none", "--html", str(tmp_path / "r.html"), "--png", str(tmp_path / "r.png"),
                     *FAST])
    assert str(exited.value) == (f"happysad.review: error: 1 file(s) cannot be read: {folder / 'sad' / 'gone.jpg'} "
                                 f"(a link to nothing); run `python -m happysad.clean {folder}` first")

@pytest.mark.slow
def test_quarantine_with_the_backbone_round_trips(tmp_path, weights_file):
    folder = faces(tmp_path / "data")
    before = tree(folder)
    report = run(folder, tmp_path, "--quarantine", "--min-confidence", "0", "--cache", "memory",
                 weights=weights_file)
    movable = [s for s in report["suspects"] if s["kind"] == "wrong-folder" or s["far"]]  # not near-chance ones
    assert len(report["moved"]) == len(movable) > 0
    assert all(move["to"].startswith(".quarantine/review-") for move in report["moved"])
    assert len(tree(folder)) == len(before) + 1  # every file, and the manifest
    quarantine.restore(folder)
    assert tree(folder) == before


@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5").exists(),
                    reason="needs ../shared/weights (ImageNet weights; not part of a user's clone)")
@pytest.mark.slow
def test_imagenet_features_rank_flipped_faces_near_the_top(tmp_path):
    folder = tmp_path / "data"
    sample.write_faces(folder, per_class=40, size=128, seed=4)
    chosen = [(path, other) for name, other in (("happy", "sad"), ("sad", "happy"))
              for path in sorted((folder / name).iterdir())[:3]]
    for path, other in chosen:
        path.rename(folder / other / path.name)
    flipped = {f"{other}/{path.name}" for path, other in chosen}
    report = review.review(review.parse_args([
        str(folder), "--arch", "mobilenet025", "--image-size", "128", "--cache", "memory",
        "--weights", str(SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"),
        "--html", str(tmp_path / "r.html"), "--png", str(tmp_path / "r.png")]))
    given = {image["path"]: image["probabilities"][image["folder"]] for image in report["images"]}
    # How often a flipped face gets a lower probability for its folder than a correctly filed one: 0.5 is chance.
    auc = np.mean([given[f] < given[p] for f in flipped for p in given if p not in flipped])
    top = [s["path"] in flipped for s in report["suspects"] if s["kind"] == "wrong-folder"][:10]
    assert auc >= 0.85 and sum(top) >= 4, (auc, top)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5").exists(),
                    reason="needs ../shared/weights (ImageNet weights; not part of a user's clone)")
@pytest.mark.slow
def test_imagenet_features_find_noise_and_text_in_a_face_folder(tmp_path):
    import cv2

    folder = tmp_path / "data"
    sample.write_faces(folder, per_class=40, size=128, seed=6)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8)
    cv2.imwrite(str(folder / "happy" / "noise.png"), noise)
    text = np.full((128, 128, 3), 255, np.uint8)
    for row, line in enumerate(("QUARTERLY", "REPORT 2026", "page 3 of 12")):
        cv2.putText(text, line, (4, 40 + 30 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(folder / "sad" / "notes.png"), text)
    report = review.review(review.parse_args([
        str(folder), "--arch", "mobilenet025", "--image-size", "128", "--cache", "memory",
        "--weights", str(SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"),
        "--html", str(tmp_path / "r.html"), "--png", str(tmp_path / "r.png")]))
    far = {s["path"] for s in report["suspects"] if s["kind"] == "no-class" and s["far"]}
    assert {"happy/noise.png", "sad/notes.png"} <= far, report["suspects"]
    assert len(far) <= 4  # the faces themselves are not far


def test_command_line_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="happysad.review: error: .* does not exist"):
        review.main([str(tmp_path / "missing")])
    for wrong in (["--folds", "1"], ["--weights", "none"], ["--cache", "somewhere"]):
        with pytest.raises(SystemExit):
            review.parse_args([str(tmp_path), *wrong])
        assert "error:" in capsys.readouterr().err


def test_with_faces_review_scores_the_face_crops_under_trains_stored_features(weights_file, tmp_path):
    """--faces, a setting review shares with train (config.FeatureConfig): the features of the face crops, kept
    in the store under the key train uses for the same settings; without it, the whole pictures'."""
    import cv2

    from happysad import data, faces as face_finder
    from happysad.config import TrainConfig
    from happysad.files import sha256_each

    folder = tmp_path / "data"
    sample.write_faces(folder, per_class=6, size=128, seed=5)
    files, _ = data.list_images(folder, data.find_classes(folder))
    digests = sha256_each(files.paths)
    settings = ["--arch", "mobilenet025", "--weights", str(weights_file), "--image-size", str(SIZE),
                "--cache", f"disk:{tmp_path / 'store'}"]

    def scored(*extra):
        found, computed = features.of_backbones(review.parse_args([str(folder), *settings, *extra]), files, digests)
        return found["mobilenet025"], computed["mobilenet025"]

    cropped, computed = scored("--faces")
    assert computed == len(files)
    again, computed = scored("--faces")
    assert computed == 0 and np.array_equal(again, cropped)  # read back from the store
    whole, computed = scored()
    assert computed == len(files)  # another preprocessing, another key: computed anew
    found = [face_finder.largest_face(cv2.imread(path)[..., ::-1]) is not None for path in files.paths]
    differs = [not np.allclose(a, b, atol=1e-5) for a, b in zip(cropped, whole)]
    assert differs == found and any(found) and not all(found)  # a face found: its crop; none: the whole picture
    trained = TrainConfig.build(arch="mobilenet025", weights=str(weights_file), image_size=SIZE, faces=True)
    reviewed = review.parse_args([str(folder), *settings, "--faces"])
    assert trained.preprocessing() == reviewed.preprocessing()  # train's stored features serve review


def test_with_the_expression_network_review_reads_the_face_and_says_what_fits_no_class_cannot_see(
        expression_file, tmp_path, capsys):
    folder, out = faces(tmp_path / "data"), tmp_path / "out"
    config = review.parse_args([str(folder), "--arch", "expression", "--weights", str(expression_file),
                                "--image-size", str(SIZE), "--html", str(out / "review.html"),
                                "--png", str(out / "review.png"), *FAST])
    assert config.preprocessing() == images.Preprocessing(SIZE, faces=True)  # as train reads it
    review.review(config)
    assert f"note: {marks.FACE_FEATURES_CAVEAT}" in capsys.readouterr().out


def test_review_scores_the_picture_beside_the_face_as_train_does(stand_in_downloads, tmp_path, capsys):
    """--arch mobilenet025+expression: both backbones' stored features side by side, and the suspects' heatmaps
    with the face crop's panel beside the picture."""
    folder, out = faces(tmp_path / "data"), tmp_path / "out"
    report = review.review(review.parse_args([
        str(folder), "--arch", "mobilenet025+expression", "--image-size", str(SIZE), "--html",
        str(out / "review.html"), "--png", str(out / "review.png"), *FAST]))
    printed = capsys.readouterr().out
    assert "mobilenet025 features: 24 computed" in printed and "expression features: 24 computed" in printed
    assert "on mobilenet025+expression features" in (out / "review.html").read_text()
    heatmaps = re.findall(r'alt="evidence for [^"]*" src="data:image/jpeg;base64,([^"]+)"',
                          (out / "review.html").read_text())
    wrong = [s for s in report["suspects"] if s["kind"] == "wrong-folder"]
    assert len(heatmaps) == len(wrong) > 0
    assert all(images.decode_pixels(base64.b64decode(jpeg)).shape[:2] == (SIZE, 2 * SIZE) for jpeg in heatmaps)


def test_fits_no_class_measures_only_the_columns_it_is_given():
    """As train's mark: beside the expression network, the picture's features alone (features.domain_columns)."""
    labels = np.array([0] * 40 + [1] * 40)
    picture = crossval.unit(clusters(labels))
    face = crossval.unit(np.r_[[[1.0] * 16]] + np.random.default_rng(1).normal(0, 0.1, (80, 16)))
    face[5] = -face[5]  # unlike every other face, an ordinary picture
    joined = np.concatenate([picture, face], axis=1)
    everything = review.rank({"pair": joined}, labels, list(range(80)), 2, n_folds=5)
    assert everything.distances[5] > everything.far_limit
    pictures_only = review.rank({"pair": joined}, labels, list(range(80)), 2, n_folds=5, columns={"pair": ((0, 64),)})
    assert pictures_only.distances[5] <= pictures_only.far_limit


@pytest.mark.parametrize("argv, message", [
    (["--arch", "cnn"], "--arch cnn: review scores a pretrained backbone's features"),
    (["--arch", "auto", "--weights", "x_notop.h5"], "--weights must be imagenet"),
    (["--arch", "mobilenet+nothing"], "--arch mobilenet+nothing: choose auto, or one or more of"),
])
def test_review_refuses_what_it_cannot_score_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        review.parse_args(["data", *argv])
    assert message in capsys.readouterr().err
