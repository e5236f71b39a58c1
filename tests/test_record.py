"""The model and its record are saved atomically and load back identical."""
import json

import keras
import numpy as np
import pytest

from happysad import classifier, files, images, model as models, record


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return models.compile_model(models.build_cnn(2, 24), 2)


def test_h5_round_trip_gives_identical_predictions(tmp_path):
    network = small_model()
    path = tmp_path / "m" / "happysad.h5"
    record.save(network, path, record.Record(class_names=["happy", "sad"], preprocessing=images.Preprocessing(24)))
    batch = np.random.default_rng(0).random((5, 24, 24, 3)).astype("float32")
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(network.predict(batch, verbose=0), loaded.predict(batch, verbose=0))
    saved = json.loads((tmp_path / "m" / "happysad.json").read_text())
    assert saved["class_names"] == ["happy", "sad"]
    assert saved["model_sha256"] == files.sha256(path)
    assert classifier.load(path).class_names == ["happy", "sad"]


def test_failed_save_keeps_the_previous_model(tmp_path, monkeypatch):
    path = tmp_path / "happysad.h5"
    first = small_model(1)
    record.save(first, path, record.Record(class_names=["a", "b"], preprocessing=images.Preprocessing(24)))
    before = path.read_bytes(), record.sidecar_path(path).read_text()

    second = small_model(2)
    real_save = keras.Model.save

    def crash_halfway(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:
            f.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        record.save(second, path, record.Record(class_names=["x", "y"], preprocessing=images.Preprocessing(24)))
    assert (path.read_bytes(), record.sidecar_path(path).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["happysad.h5", "happysad.json"]


def test_sidecar_path_and_unknown_keys():
    assert record.sidecar_path("models/happysad.h5").as_posix() == "models/happysad.json"
    assert record.sidecar_path("out/model.tflite").as_posix() == "out/model.json"
    assert record.sidecar_path("models/happysad.v2.h5").as_posix() == "models/happysad.v2.json"
    assert record.sidecar_path("out/happysad.v2-savedmodel").as_posix() == "out/happysad.v2-savedmodel.json"
    restored = record.Record.from_dict({"class_names": ["a", "b"], "image_size": 8, "from_the_future": 1})
    assert restored.binary and restored.preprocessing == images.Preprocessing(8, upright=False)  # as 0.10 decoded


def test_the_preprocessing_is_stored_whole_and_read_back_from_every_format_version():
    written = json.loads(record.Record(["a", "b"], images.Preprocessing(24, faces=True)).to_json())
    assert "image_size" not in written and written["format_version"] == record.FORMAT_VERSION == 8
    assert written["preprocessing"] == {"image_size": 24, "faces": True, "face_beside": False, "upright": True,
                                        **images.Preprocessing.STEPS}
    assert record.Record.from_dict(written).preprocessing == images.Preprocessing(24, faces=True)
    version_2 = {"class_names": ["a", "b"], "image_size": 24, "format_version": 2,
                 "preprocessing": {"decode": "tf.io.decode_image RGB", "faces": True}}
    assert record.Record.from_dict(version_2).preprocessing == images.Preprocessing(24, faces=True, upright=False)
    version_3 = {"class_names": ["a", "b"], "format_version": 3, "preprocessing": {"image_size": 24}}
    older = record.Record.from_dict(version_3)  # before calibration and marks: a model that has neither
    assert older.calibration == {} and older.domain == {}


def test_an_older_record_is_written_back_in_the_current_format_and_one_without_a_size_is_refused(tmp_path):
    sidecar = record.sidecar_path(tmp_path / "m.h5")
    sidecar.write_text(json.dumps({"class_names": ["a", "b"], "image_size": 24, "format_version": 2,
                                   "preprocessing": {"faces": True}}))
    record.update(tmp_path / "m.h5", threshold=0.4)
    written = json.loads(sidecar.read_text())
    assert written["format_version"] == record.FORMAT_VERSION and "image_size" not in written
    assert record.read(tmp_path / "m.h5").preprocessing == images.Preprocessing(24, faces=True, upright=False)
    sidecar.write_text(json.dumps({"class_names": ["a", "b"], "format_version": 3, "preprocessing": {}}))
    with pytest.raises(record.RecordError, match="no image size"):
        record.read(tmp_path / "m.h5")


def test_models_whose_names_share_a_first_word_keep_records_of_their_own(tmp_path):
    first, second = tmp_path / "happysad.h5", tmp_path / "happysad.best.h5"
    record.save(small_model(1), first, record.Record(class_names=["a", "b"], preprocessing=images.Preprocessing(24)))
    record.save(small_model(2), second, record.Record(class_names=["x", "y"], preprocessing=images.Preprocessing(24)))
    assert classifier.load(first).class_names == ["a", "b"]
    assert classifier.load(second).class_names == ["x", "y"]


def test_a_record_of_an_earlier_release_under_its_old_name_is_read_only_for_the_model_it_names(tmp_path):
    model = tmp_path / "happysad.best.h5"
    record.save(small_model(1), model, record.Record(class_names=["a", "b"], preprocessing=images.Preprocessing(24)))
    record.sidecar_path(model).rename(tmp_path / "happysad.json")  # where releases up to 0.10 wrote it
    assert classifier.load(model).class_names == ["a", "b"]
    other = tmp_path / "happysad.other.h5"
    other.write_bytes(model.read_bytes())
    with pytest.raises(classifier.ModelError, match="no record"):
        classifier.load(other)


def test_a_model_and_a_record_that_do_not_belong_together_are_a_clear_error(tmp_path):
    kept, replaced = tmp_path / "kept.h5", tmp_path / "replaced.h5"
    record.save(small_model(1), kept, record.Record(class_names=["a", "b"], preprocessing=images.Preprocessing(24)))
    record.save(small_model(2), replaced, record.Record(class_names=["x", "y"],
                                                        preprocessing=images.Preprocessing(24)))
    replaced.write_bytes(kept.read_bytes())  # another model copied over this one, its record left as it was
    with pytest.raises(classifier.ModelError, match="written for another model"):
        classifier.load(replaced)


def test_a_record_that_fails_to_save_leaves_the_previous_pair(tmp_path, monkeypatch):
    path = tmp_path / "happysad.h5"
    record.save(small_model(1), path, record.Record(class_names=["a", "b"], preprocessing=images.Preprocessing(24)))
    before = path.read_bytes(), record.sidecar_path(path).read_text()

    def no_space(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files, "write_atomic", no_space)
    with pytest.raises(OSError, match="disk full"):
        record.save(small_model(2), path, record.Record(class_names=["x", "y"],
                                                        preprocessing=images.Preprocessing(24)))
    assert (path.read_bytes(), record.sidecar_path(path).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["happysad.h5", "happysad.json"]


def test_the_record_is_as_readable_as_the_model(tmp_path):
    """write_atomic's temporary file starts readable by its owner alone; the record must not stay so."""
    path = tmp_path / "happysad.h5"
    record.save(small_model(1), path, record.Record(class_names=["a", "b"], preprocessing=images.Preprocessing(24)))
    assert record.sidecar_path(path).stat().st_mode & 0o777 == path.stat().st_mode & 0o777 == 0o666 & ~files.UMASK
    record.sidecar_path(path).chmod(0o640)  # the user's own choice, kept when the record is written again
    record.update(path, threshold=0.4)
    assert record.sidecar_path(path).stat().st_mode & 0o777 == 0o640
    record.save(small_model(2), path, record.Record(class_names=["a", "b"], preprocessing=images.Preprocessing(24)))
    assert record.sidecar_path(path).stat().st_mode & 0o777 == 0o640
