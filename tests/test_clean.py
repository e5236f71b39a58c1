"""happysad.clean: quarantines what would break training, converts what it can, deletes nothing."""
import hashlib
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_near_copies import cropped_copy, framed, jpeg, resized_copy, scene

from happysad import cache, clean, images, near_copies, quarantine, sample
from happysad import data as data_module

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import imghdr

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path):
    """Each test in its own working folder: what clean writes beside it stays there (not by monkeypatch,
    which a test may undo)."""
    before = os.getcwd()
    os.chdir(tmp_path)
    yield
    os.chdir(before)


@pytest.fixture
def dataset(tmp_path):
    """(data_dir, {reason: [paths]}): 4 faces per class plus one broken or tricky file of each kind."""
    data = tmp_path / "data"
    sample.write_faces(data, per_class=4, size=48, seed=2)
    return data, sample.write_broken_files(data, seed=2, size=48)


def tree(folder: Path) -> dict:
    """{relative path: sha256} of every file under folder, hidden ones and the quarantine included."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in folder.rglob("*") if path.is_file()}


def expected_reasons(data: Path, broken: dict) -> dict:
    return {path.relative_to(data).as_posix(): reason
            for reason, paths in broken.items() if reason != "keep" for path in paths}


def test_every_broken_kind_is_quarantined_for_its_reason(dataset):
    data, broken = dataset
    summary = clean.clean(data)

    assert {found.path: found.reason for found in summary.findings} == expected_reasons(data, broken)
    for found in summary.findings:
        assert not (data / found.path).exists()
        assert found.quarantine == f".quarantine/{found.reason}/{found.path}"
        assert hashlib.sha256((data / found.quarantine).read_bytes()).hexdigest() == found.sha256
    records = [json.loads(line) for line in (data / ".quarantine" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(record["original"] for record in records) == sorted(f.path for f in summary.findings)
    # The generated faces and the odd-but-valid files all stay.
    assert all(path.exists() for path in broken["keep"])
    assert len(list((data / "happy").glob("happy_*.jpg"))) == len(list((data / "sad").glob("sad_*.jpg"))) == 4


def test_valid_jpegs_that_imghdr_misses_and_odd_pngs_are_kept(dataset):
    data, broken = dataset
    jpegs = [path for path in broken["keep"] if path.suffix == ".jpg" and "copy" not in path.name]
    assert len(jpegs) == 3
    assert all(imghdr.what(path) is None for path in jpegs)  # the tutorial's filter would delete these
    assert all(clean.sniff(path.read_bytes()) == "jpeg" for path in jpegs)

    clean.clean(data)
    for path in broken["keep"]:
        assert path.exists()
        assert images.Preprocessing(24).load(str(path)).shape == (24, 24, 3)


def colour_file(bgr, extension: str, size) -> bytes:
    return cv2.imencode(extension, np.full((*size, 3), bgr, np.uint8))[1].tobytes()


def test_conversions_are_readable_have_the_right_colours_and_overwrite_nothing(tmp_path):
    data = tmp_path / "data"
    folder = data / "colours"
    folder.mkdir(parents=True)
    red = (0, 0, 255)  # BGR, as OpenCV writes it
    originals = {  # different sizes, so no two are duplicates of each other
        "red.webp": colour_file(red, ".webp", (40, 50)),
        "red.tiff": colour_file(red, ".tiff", (41, 50)),
        "red.jpg": colour_file(red, ".png", (42, 50)),  # PNG bytes named .jpg
        "red": colour_file(red, ".jpg", (43, 50)),  # a JPEG without an extension
        "red.png": colour_file((255, 0, 0), ".png", (44, 50)),  # an unrelated blue image holding the name
    }
    for name, data_bytes in originals.items():
        (folder / name).write_bytes(data_bytes)

    summary = clean.clean(data)

    assert sorted(found.path for found in summary.findings) == ["colours/red", "colours/red.jpg",
                                                                "colours/red.tiff", "colours/red.webp"]
    assert (folder / "red.png").read_bytes() == originals["red.png"]
    converted = [data / found.converted for found in summary.findings]
    assert len(set(converted)) == 4 and all(images.is_trainable_name(path.name) for path in converted)
    for path in converted:
        r, g, b = images.Preprocessing(8).load(str(path)).numpy().mean(axis=(0, 1))
        assert r > 0.9 and g < 0.1 and b < 0.1, path
    renamed = {found.path: data / found.converted for found in summary.findings}
    assert renamed["colours/red.jpg"].read_bytes() == originals["red.jpg"]  # lossless: the same bytes
    assert renamed["colours/red.jpg"].suffix == ".png" and renamed["colours/red"].suffix == ".jpg"


def test_nothing_is_deleted_and_restore_gives_back_the_exact_tree(dataset):
    data, _ = dataset
    before = tree(data)

    clean.clean(data)
    after = tree(data)
    assert not Counter(before.values()) - Counter(after.values())
    assert after != before

    result = quarantine.restore(data)
    assert len(result.restored) == len(expected_reasons(data, dataset[1]))
    assert len(result.removed) == 4 and not result.skipped
    assert tree(data) == before
    assert not (data / ".quarantine").exists()


def test_restore_never_overwrites_and_keeps_copies_that_changed(dataset):
    data, _ = dataset
    clean.clean(data)
    (data / "happy" / "truncated.jpg").write_bytes(b"a new file the user put here")
    (data / "happy" / "face.png").write_bytes(b"the user edited the converted copy")

    result = quarantine.restore(data)

    assert (data / "happy" / "truncated.jpg").read_bytes() == b"a new file the user put here"
    assert (data / ".quarantine" / "corrupt" / "happy" / "truncated.jpg").exists()
    assert (data / "happy" / "face.tiff").exists()  # its original came back...
    assert (data / "happy" / "face.png").read_bytes() == b"the user edited the converted copy"  # ...the edit stays
    assert len(result.skipped) == 2
    manifest = (data / ".quarantine" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["original"] for line in manifest] == ["happy/truncated.jpg"]


def test_near_copy_under_the_other_label_is_a_conflict_and_restore_undoes_it(tmp_path):
    data = tmp_path / "data"
    written = sample.write_faces(data, per_class=4, size=128, seed=5)
    (data / "sad" / "resized-happy.jpg").write_bytes(resized_copy(cv2.imread(str(written["happy"][0]))))
    (data / "happy" / "cropped-sad.png").write_bytes(cropped_copy(cv2.imread(str(written["sad"][1])), 0.06))
    before = tree(data)

    summary = clean.clean(data)

    assert {found.path: (found.reason, found.detail) for found in summary.findings} == {
        "happy/happy_000.jpg": ("label-conflict", "near copy of sad/resized-happy.jpg"),
        "sad/resized-happy.jpg": ("label-conflict", "near copy of happy/happy_000.jpg"),
        "sad/sad_001.jpg": ("label-conflict", "near copy of happy/cropped-sad.png"),
        "happy/cropped-sad.png": ("label-conflict", "near copy of sad/sad_001.jpg"),
    }
    assert all(found.quarantine == f".quarantine/label-conflict/{found.path}" for found in summary.findings)
    assert summary.near_copies == [] and clean.clean(data).findings == []
    clean.main([str(data), "--restore"])
    assert tree(data) == before


def test_a_re_framed_copy_under_the_other_label_is_a_conflict_and_restore_undoes_it(tmp_path):
    data = tmp_path / "data"
    sample.write_faces(data, per_class=3, size=128, seed=5)
    wide = scene(2)
    (data / "happy" / "stock.jpg").write_bytes(jpeg(framed(wide, 16 / 9, 0.5)))
    (data / "sad" / "stock-4x3.jpg").write_bytes(jpeg(framed(wide, 4 / 3, 0.2)[:, ::-1]))  # and mirrored
    before = tree(data)

    summary = clean.clean(data)

    assert {found.path: (found.reason, found.detail) for found in summary.findings} == {
        "happy/stock.jpg": ("label-conflict", "near copy of sad/stock-4x3.jpg"),
        "sad/stock-4x3.jpg": ("label-conflict", "near copy of happy/stock.jpg"),
    }
    assert not (data / "happy" / "stock.jpg").exists()
    clean.main([str(data), "--restore"])
    assert tree(data) == before


def test_a_second_clean_reads_each_pairs_keypoint_check_from_the_store(tmp_path, monkeypatch):
    data = tmp_path / "data"
    sample.write_faces(data, per_class=3, size=128, seed=5)
    wide = scene(2)
    (data / "happy" / "stock.jpg").write_bytes(jpeg(framed(wide, 16 / 9, 0.5)))
    (data / "sad" / "stock-4x3.jpg").write_bytes(jpeg(framed(wide, 4 / 3, 0.2)))
    first = clean.clean(data, dry_run=True)
    assert {found.reason for found in first.findings} == {"label-conflict"}

    def unchecked(*args, **kwargs):
        raise AssertionError("a pair was checked again")

    monkeypatch.setattr(near_copies, "inliers", unchecked)
    again = clean.clean(data, dry_run=True)
    assert [(f.path, f.detail) for f in again.findings] == [(f.path, f.detail) for f in first.findings]
    files, _ = data_module.list_images(data, ["happy", "sad"])
    monkeypatch.setattr(near_copies, "file_fingerprint", unchecked)  # train finds clean's fingerprints
    store = cache.array_store("auto", near_copies.FAMILY, near_copies.VERSION)
    assert len(set(data_module.near_copy_groups(files, store))) == len(files) - 1


def test_near_copies_within_a_class_stay_and_are_reported(tmp_path, capsys):
    data = tmp_path / "data"
    face = sample.write_faces(data, per_class=4, size=128, seed=5)["happy"][2]
    bgr = cv2.imread(str(face))
    (data / "happy" / "copy-1.jpg").write_bytes(resized_copy(bgr))
    (data / "happy" / "copy-2.jpg").write_bytes(resized_copy(bgr))  # the same bytes: a duplicate, as always
    (data / "happy" / "cropped.png").write_bytes(cropped_copy(bgr, 0.08))
    before = tree(data)

    summary = clean.clean(data)

    assert [(found.path, found.reason) for found in summary.findings] == [("happy/copy-2.jpg", "duplicate")]
    group = ["happy/copy-1.jpg", "happy/cropped.png", "happy/happy_002.jpg"]
    assert summary.near_copies == [group]
    text = clean.report(summary)
    assert "near copies kept (same class): 1 groups, 3 files\n  " + ", ".join(group) in text
    quarantine.restore(data)
    assert tree(data) == before
    clean.main([str(data), "--dry-run", "--json", "-"])
    assert json.loads(capsys.readouterr().out)["near_copies"] == [group]


def test_a_mis_extended_near_copy_is_listed_under_the_name_of_its_readable_copy(tmp_path):
    data = tmp_path / "data"
    face = sample.write_faces(data, per_class=4, size=128, seed=5)["happy"][2]
    (data / "happy" / "cropped.jpg").write_bytes(cropped_copy(cv2.imread(str(face)), 0.08))  # PNG bytes
    summary = clean.clean(data)
    assert [(found.path, found.reason) for found in summary.findings] == [("happy/cropped.jpg", "mis-extended")]
    assert summary.near_copies == [["happy/cropped.png", "happy/happy_002.jpg"]]
    assert (data / "happy" / "cropped.png").is_file() and not (data / "happy" / "cropped.jpg").exists()
    assert "9 images left to train on: 8 kept as they were and 1 readable copies" in clean.report(summary)


def test_second_run_finds_nothing(dataset):
    data, _ = dataset
    clean.clean(data)
    settled = tree(data)
    assert clean.clean(data).findings == []
    assert tree(data) == settled


def test_dry_run_changes_nothing(dataset):
    data, broken = dataset
    before = tree(data)
    summary = clean.clean(data, dry_run=True)
    assert tree(data) == before
    assert {found.path: found.reason for found in summary.findings} == expected_reasons(data, broken)
    assert all(found.quarantine == "" and found.converted == "" for found in summary.findings)


@pytest.mark.parametrize("stop_at", [1, 2, 3, 6, 7])
def test_an_interrupted_run_loses_nothing_and_can_be_finished_or_undone(dataset, monkeypatch, stop_at):
    data, _ = dataset
    before = tree(data)
    real_replace, calls = os.replace, []

    def interrupted_replace(source, target):
        if Path(target).is_relative_to(data):  # the moves and conversions, not the near-copy store's writes
            calls.append(target)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        clean.clean(data)
    monkeypatch.undo()
    assert not Counter(before.values()) - Counter(tree(data).values())
    assert not [name for name in tree(data) if name.endswith(".tmp")]  # files.write_atomic's temporary names
    with open(data / ".quarantine" / "manifest.jsonl", "a") as manifest:
        manifest.write('{"original": "happy/')  # as if killed while writing a record: ignored, never harmful

    clean.clean(data)  # finishing the job, then undoing both runs, gives back the original tree
    assert clean.clean(data).findings == []
    quarantine.restore(data)
    assert tree(data) == before


def test_min_size(dataset):
    data, _ = dataset
    summary = clean.clean(data, min_size=49, dry_run=True)  # the generated faces are 48 px
    reasons = {found.path: found.reason for found in summary.findings}
    assert reasons["happy/happy_000.jpg"] == reasons["sad/sad_003.jpg"] == "too-small"


def test_json_summary(dataset, tmp_path, capsys):
    data, broken = dataset
    clean.main([str(data), "--dry-run", "--json", "-"])
    report = json.loads(capsys.readouterr().out)

    assert report["dry_run"] is True and report["min_size"] == 32
    assert set(report["classes"]) == {"happy", "sad"}
    assert report["totals"]["files"] == len(tree(data))
    for row in [*report["classes"].values(), report["totals"]]:
        assert row["kept"] + sum(row[reason] for reason in clean.REASONS) == row["files"]
    assert report["totals"]["mis-extended"] == report["totals"]["converted"] == 4
    assert report["classes"]["sad"]["empty"] == 1 and report["classes"]["happy"]["corrupt"] == 1
    assert {finding["path"]: finding["reason"] for finding in report["findings"]} == expected_reasons(data, broken)

    clean.main([str(data), "--json", str(tmp_path / "summary.json")])
    printed = capsys.readouterr().out
    assert "label-conflict" in printed and "moved 11 files" in printed
    assert json.loads((tmp_path / "summary.json").read_text())["totals"]["kept"] == report["totals"]["kept"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "no-classes").mkdir()
    for folder, message in (("missing", "does not exist"), ("a-file", "is not a folder"),
                            ("no-classes", "has no class folders")):
        with pytest.raises(SystemExit) as exit_info:
            clean.main([str(tmp_path / folder)])
        error = str(exit_info.value.code)
        assert error.startswith("happysad.clean: error: ") and message in error and "\n" not in error

    with pytest.raises(SystemExit) as exit_info:
        clean.main([str(tmp_path), "--min-size", "0"])
    assert exit_info.value.code == 2 and "--min-size" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_error_from_the_shell_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "happysad.clean", str(tmp_path / "missing")], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "happysad" in line] == [
        f"happysad.clean: error: data folder {tmp_path / 'missing'} does not exist"]


def test_hidden_files_are_skipped_left_alone_and_reported(tmp_path, capsys):
    data = tmp_path / "data"
    sample.write_faces(data, per_class=3, size=48, seed=2)
    (data / "happy" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "sad" / ".thumbnails").mkdir()
    (data / "sad" / ".thumbnails" / "x.jpg").write_bytes(b"not an image")
    before = tree(data)
    clean.main([str(data)])
    out = capsys.readouterr().out
    assert "skipped 2 hidden file(s) or folder(s) (e.g. happy/.DS_Store)" in out and "nothing to clean" in out
    assert tree(data) == before


def test_progress_goes_to_standard_error_so_json_on_standard_output_stays_whole(dataset, monkeypatch, capsys):
    monkeypatch.setattr(clean, "PROGRESS_FROM", 1)
    monkeypatch.setattr(near_copies, "PROGRESS_FROM", {"file": 1, "pair": 1})
    clean.main([str(dataset[0]), "--json", "-", "--dry-run"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dry_run"] is True
    assert "file/s" in captured.err  # the bars showed, beside the JSON


def test_restore_works_when_only_the_quarantine_is_left(tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("happy", "sad"):
        (data / label).mkdir(parents=True)
        (data / label / "empty.jpg").write_bytes(b"")
    clean.main([str(data)])
    for label in ("happy", "sad"):
        (data / label).rmdir()  # every file went to quarantine; the user removed the empty folders
    clean.main([str(data), "--restore"])
    assert "restored 2 files" in capsys.readouterr().out
    assert (data / "happy" / "empty.jpg").is_file() and (data / "sad" / "empty.jpg").is_file()


def test_a_link_to_a_file_of_the_class_goes_and_the_file_stays(dataset):
    data, _ = dataset
    (data / "sad" / "a_link.jpg").symlink_to("sad_001.jpg")  # sorts before the file it points to
    summary = clean.clean(data)
    duplicates = {found.path: found.detail for found in summary.findings if found.reason == "duplicate"}
    assert duplicates["sad/a_link.jpg"] == "same image as sad/sad_001.jpg"
    assert (data / "sad" / "sad_001.jpg").is_file() and not (data / "sad" / "sad_001.jpg").is_symlink()
    assert (data / ".quarantine" / "duplicate" / "sad" / "a_link.jpg").is_symlink()
    assert clean.clean(data, dry_run=True).findings == []  # nothing left dangling for a second run



def test_a_link_goes_even_when_the_file_it_points_to_needs_converting(tmp_path):
    data = tmp_path / "data"
    sample.write_faces(data, per_class=3, size=48, seed=2)
    png = cv2.imencode(".png", np.full((48, 48, 3), 90, np.uint8))[1].tobytes()
    (data / "sad" / "z.jpg").write_bytes(png)  # a PNG named .jpg: it gets a readable copy, z.png
    (data / "sad" / "a.png").symlink_to("z.jpg")  # the same bytes, under the right extension, sorted first
    reasons = {found.path: found.reason for found in clean.clean(data).findings}
    assert reasons == {"sad/a.png": "duplicate", "sad/z.jpg": "mis-extended"}
    assert (data / "sad" / "z.png").read_bytes() == png and not os.path.lexists(data / "sad" / "a.png")


def test_a_link_to_nothing_is_unreadable_and_restore_puts_the_link_back(dataset):
    data, _ = dataset
    (data / "happy" / "gone.jpg").symlink_to(data / "nowhere.jpg")
    summary = clean.clean(data)
    found = next(found for found in summary.findings if found.path == "happy/gone.jpg")
    assert (found.reason, found.detail) == ("unreadable", "cannot be read (No such file or directory)")
    assert not os.path.lexists(data / "happy" / "gone.jpg")
    assert os.path.islink(data / ".quarantine" / "unreadable" / "happy" / "gone.jpg")
    assert "happy/gone.jpg" in quarantine.restore(data).restored
    assert os.readlink(data / "happy" / "gone.jpg") == str(data / "nowhere.jpg")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_file_without_permission_to_read_is_unreadable(dataset):
    data, _ = dataset
    (data / "happy" / "happy_000.jpg").chmod(0)
    found = {found.path: found for found in clean.clean(data, dry_run=True).findings}
    assert found["happy/happy_000.jpg"].reason == "unreadable"
    assert "Permission denied" in found["happy/happy_000.jpg"].detail


@pytest.mark.parametrize("width, height", [(1, 1), (5, 1), (1, 100), (600, 1), (4000, 50)])
def test_a_dot_or_a_strip_is_checked_without_a_crash(tmp_path, width, height):
    data = tmp_path / "data"
    sample.write_faces(data, per_class=3, size=48, seed=2)
    strip = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    cv2.imwrite(str(data / "happy" / "strip.png"), strip)
    kept = clean.clean(data, min_size=1, dry_run=True).findings == []
    reasons = {found.path: found.reason for found in clean.clean(data, dry_run=True).findings}
    assert kept and reasons.get("happy/strip.png") == ("too-small" if min(width, height) < 32 else None)


def test_the_undo_command_is_quoted_for_a_folder_name_with_a_space(tmp_path, capsys):
    data = tmp_path / "my photos"
    sample.write_faces(data, per_class=3, size=48, seed=2)
    (data / "sad" / "empty.jpg").write_bytes(b"")
    clean.main([str(data)])
    assert f"(undo: python -m happysad.clean '{data}' --restore)" in capsys.readouterr().out
