"""The one-call Python API: happysad.train(...) returns the saved model, happysad.load(path).predict(paths)."""
import json

import numpy as np
import pytest

import happysad
from happysad import predict, record, sample


@pytest.mark.slow
def test_train_returns_the_saved_model_and_load_predicts_files_as_the_command_does(
        weights_file, tmp_path, capsys):
    sample.write_faces(tmp_path / "photos", per_class=15, size=32, seed=3)
    model = happysad.train(data=tmp_path / "photos", arch="mobilenet025", weights=weights_file, image_size=32,
                           folds=3, model=tmp_path / "m.h5", logdir=tmp_path / "logs",
                           cache=f"disk:{tmp_path / 'cache'}")
    saved = record.read(tmp_path / "m.h5")
    assert model.record.to_json() == saved.to_json() and len(saved.split["train"]) == 30
    paths = sorted((tmp_path / "photos" / "sad").iterdir())[:4]
    loaded = happysad.load(tmp_path / "m.h5").predict(paths)
    capsys.readouterr()
    predict.main([*map(str, paths), "--model", str(tmp_path / "m.h5"), "--json"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p.label for p in loaded] == [row["label"] for row in printed]
    np.testing.assert_allclose([p.probability for p in loaded], [row["probability"] for row in printed], atol=1e-6)
    # One path, or images load_image prepared, give the same; nothing gives nothing; a non-image is named.
    model = happysad.load(tmp_path / "m.h5")
    assert model.predict(str(paths[0]))[0].probability == pytest.approx(loaded[0].probability, abs=1e-6)
    prepared = model.predict([model.load_image(path) for path in paths[:2]])
    assert [p.probability for p in prepared] == pytest.approx([p.probability for p in loaded[:2]], abs=1e-6)
    assert model.predict([]) == []
    assert model.predict(model.load_image(paths[0]))[0].probability == pytest.approx(loaded[0].probability, abs=1e-6)
    from_glob = model.predict(path for path in paths[:2])  # any iterable, a generator or Path.glob(...)
    assert [p.probability for p in from_glob] == pytest.approx([p.probability for p in loaded[:2]], abs=1e-6)
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'notes.jpg'}: "):
        model.predict([paths[0], tmp_path / "notes.jpg"])
    with pytest.raises(ValueError, match="nowhere.jpg: "):
        model.predict(tmp_path / "nowhere.jpg")


def test_a_wrong_setting_is_a_value_error_that_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match="^folds must be at least 3"):
        happysad.train(data=tmp_path, arch="mobilenet", folds=2)
    with pytest.raises(ValueError, match="unknown setting.* fold;"):
        happysad.train(data=tmp_path, arch="mobilenet", fold=2)
