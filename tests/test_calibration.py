"""calibration: Platt and temperature scaling fitted on held-out predictions, written into the output layer."""
import numpy as np
import pytest

from happysad import calibration


def overconfident(n=4000, seed=0, classes=2, sharpen=3.0):
    """Labels drawn from known probabilities, and those probabilities' logits multiplied by `sharpen`: an
    overconfident model whose true calibration is scale 1 / sharpen."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, classes)) * 1.5
    truth = calibration.from_logits(true_logits)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return labels, calibration.from_logits(true_logits * sharpen), truth


@pytest.mark.parametrize("classes", [2, 3])
def test_scaling_recovers_the_true_probabilities_of_an_overconfident_model(classes):
    labels, said, truth = overconfident(classes=classes)
    scaling = calibration.fit(said, labels)
    assert scaling.scale == pytest.approx(1 / 3.0, rel=0.15)
    fixed = calibration.apply(scaling, said)
    assert np.abs(fixed - truth).max() < 0.08
    before = calibration.expected_calibration_error(labels, said)
    after = calibration.expected_calibration_error(labels, fixed)
    assert before > 0.1 and after < 0.03
    np.testing.assert_allclose(calibration.undo(scaling, fixed), said, atol=1e-9)
    if classes > 2:  # one temperature never changes which class a row favours
        np.testing.assert_array_equal(fixed.argmax(axis=1), said.argmax(axis=1))


def test_platt_shifts_a_biased_model_so_the_label_sits_where_the_probabilities_meet():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 3000)
    logit = (labels * 2 - 1) * 1.0 + rng.normal(size=3000)  # a fair score...
    said = calibration.from_logits(logit + 1.5)  # ...said with a bias toward the second class
    scaling = calibration.fit(said, labels)
    assert scaling.shift == pytest.approx(-1.5 * scaling.scale, abs=0.25)
    fixed = calibration.apply(scaling, said)
    assert abs(fixed[:, 1].mean() - labels.mean()) < 0.02


def test_expected_calibration_error_by_hand():
    labels = np.array([1, 1, 0, 0])
    probabilities = np.array([[0.1, 0.9], [0.1, 0.9], [0.7, 0.3], [0.3, 0.7]])
    # Bin of 0.9: two right (gap 0.1); 0.7: one right, one wrong (gap 0.2) -> (2 * 0.1 + 2 * 0.2) / 4.
    assert calibration.expected_calibration_error(labels, probabilities) == pytest.approx(0.15)
    rows = calibration.reliability(labels, probabilities)
    assert sum(row["count"] for row in rows) == 4 and [row["count"] for row in rows if row["count"]] == [2, 2]


def test_the_error_by_chance_is_what_calibrated_probabilities_show_and_shrinks_with_more_images():
    """Perfectly calibrated probabilities still show an error on few images: the chance error says how much."""
    _, _, truth = overconfident(n=6400, seed=3)
    rng = np.random.default_rng(4)
    measured, chance = {}, {}
    for n in (100, 1600):
        errors = []
        for draw in range(40):  # outcomes drawn from the probabilities: calibrated by construction
            rows = truth[rng.choice(len(truth), n, replace=False)]
            labels = (rng.random(n) < rows[:, 1]).astype(int)
            errors.append(calibration.expected_calibration_error(labels, rows))
        measured[n], chance[n] = np.mean(errors), calibration.chance_calibration_error(rows)
        assert chance[n] == pytest.approx(measured[n], rel=0.25), n
    assert chance[100] / chance[1600] == pytest.approx(4.0, rel=0.3)  # one over the square root of the count
    labels, said, _ = overconfident(n=1600, seed=5)
    assert calibration.expected_calibration_error(labels, said) > 4 * calibration.chance_calibration_error(said)
    sure = np.array([[0.0, 1.0]] * 50)  # confidence 1: always right, no room for chance
    assert calibration.chance_calibration_error(sure) == 0.0


def test_the_error_by_chance_is_the_same_drawn_in_pieces(monkeypatch):
    _, said, _ = overconfident(n=500, seed=6)
    whole = calibration.chance_calibration_error(said)
    monkeypatch.setattr(calibration, "DRAWN_AT_ONCE", 1234)  # two draws of 500 images at a time
    assert calibration.chance_calibration_error(said) == pytest.approx(whole, rel=1e-12)


def test_the_scaling_written_into_the_output_layer_gives_the_calibrated_probabilities():
    from happysad.runtime import keras

    inputs = keras.Input((4,))
    network = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(inputs))
    x = np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32)
    before = np.concatenate([1 - network.predict(x, verbose=0), network.predict(x, verbose=0)], axis=1)
    scaling = calibration.Scaling(0.4, -0.3)
    calibration.apply_to_network(network, scaling)
    after = network.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(after, calibration.apply(scaling, before)[:, 1], atol=1e-5)


def test_predictions_that_rank_no_better_than_chance_are_left_as_they_are():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 40)
    said = calibration.from_logits(np.where(labels == 1, -1.0, 1.0) + rng.normal(size=40) * 0.1)  # backwards
    assert calibration.fit(said, labels) == calibration.IDENTITY
