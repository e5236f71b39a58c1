"""crossval: nested cross-validation of the logistic-regression head on feature vectors (no TensorFlow)."""
import numpy as np
import pytest

from happysad import calibration, crossval, data, metrics


def clusters(labels, dim=16, separation=1.0, seed=0):
    """Vectors around one centre per class: separation 0 gives features that know nothing about the labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(np.max(labels)) + 1, dim)) * separation
    return centres[labels] + rng.normal(size=(len(labels), dim))


def test_every_image_is_scored_by_the_head_of_the_fold_that_left_it_out():
    labels = np.repeat([0, 1], 40)
    vectors = crossval.unit(clusters(labels, separation=0.8))
    folds = data.make_folds(labels, None, 4, seed=1)
    measurement = crossval.cross_validate({"f": vectors}, labels, folds)
    assert len(measurement.fold_choices) == 4
    for fold, choice in enumerate(measurement.fold_choices):
        held = folds == fold
        head = crossval.fit_head(vectors[~held], labels[~held], choice.penalty)
        # Equal up to the solver's tolerance (cross-validation fits on coordinates in the span of the images);
        # a head that also saw the fold is far off.
        np.testing.assert_allclose(measurement.uncalibrated[held], head.predict_proba(vectors[held]), atol=1e-4)
        np.testing.assert_allclose(measurement.probabilities[held],
                                   calibration.apply(choice.scaling, head.predict_proba(vectors[held])), atol=1e-4)
        seen = crossval.fit_head(vectors, labels, choice.penalty).predict_proba(vectors[held])
        assert np.abs(seen - measurement.uncalibrated[held]).max() > 2e-2
        np.testing.assert_array_equal(measurement.predicted[held],
                                      metrics.predicted_labels(measurement.probabilities[held], choice.threshold))


@pytest.mark.slow
def test_the_informative_features_are_chosen_and_noise_measures_as_chance():
    labels = np.repeat([0, 1], 60)
    signal = crossval.unit(clusters(labels, separation=0.7, seed=1))
    noise = {f"noise{i}": crossval.unit(clusters(labels, separation=0.0, seed=10 + i)) for i in range(4)}
    folds = data.make_folds(labels, None, 5, seed=2)
    chosen = crossval.cross_validate({"signal": signal, **noise}, labels, folds)
    assert chosen.final.features == "signal" and {c.features for c in chosen.fold_choices} == {"signal"}
    assert np.mean(chosen.predicted == labels) > 0.85
    # Twenty settings of pure noise: the best of them looks better than chance on the folds it was chosen by,
    # but the nested figure pays for the choice and stays near chance.
    guessing = crossval.cross_validate(noise, labels, folds)
    assert abs(np.mean(guessing.predicted == labels) - 0.5) < 0.12


def test_a_fixed_threshold_is_used_in_every_fold_and_more_classes_take_the_arg_max():
    labels = np.repeat([0, 1], 30)
    folds = data.make_folds(labels, None, 3, seed=0)
    fixed = crossval.cross_validate({"f": crossval.unit(clusters(labels))}, labels, folds, threshold=0.3)
    assert {c.threshold for c in fixed.fold_choices} == {fixed.final.threshold} == {0.3}
    three = np.repeat([0, 1, 2], 20)
    measurement = crossval.cross_validate({"f": crossval.unit(clusters(three, separation=2.0))}, three,
                                          data.make_folds(three, None, 3, seed=0))
    assert measurement.probabilities.shape == (60, 3) and measurement.final.threshold == 0.5
    np.testing.assert_array_equal(measurement.predicted, measurement.probabilities.argmax(axis=1))
    summary = measurement.summary(three, ["a", "b", "c"])
    assert summary["folds"] == 3 and summary["count"] == 60 and len(summary["fold_choices"]) == 3
    assert summary["accuracy"] == pytest.approx(np.mean(measurement.predicted == three))


def test_near_copies_never_score_each_other():
    """Each image has a twin (the same vector): with the twins in one fold, the head cannot look the answer up,
    so random labels stay at chance; split apart, the twins would vouch for each other."""
    rng = np.random.default_rng(3)
    labels = np.repeat(rng.permutation(np.repeat([0, 1], 30)), 2)
    vectors = crossval.unit(np.repeat(rng.normal(size=(60, 128)), 2, axis=0) + 1e-3 * rng.normal(size=(120, 128)))
    groups = np.repeat(np.arange(60), 2)
    honest = crossval.cross_validate({"f": vectors}, labels, data.make_folds(labels, groups, 5, seed=0))
    leaky = crossval.cross_validate({"f": vectors}, labels, data.make_folds(labels, None, 5, seed=0))
    assert np.mean(honest.predicted == labels) < 0.7 and np.mean(leaky.predicted == labels) > 0.85


def test_joined_features_are_each_unit_length_side_by_side():
    per_backbone = {"a": np.array([[3.0, 4.0]]), "b": np.array([[0.0, 2.0, 0.0]])}
    np.testing.assert_allclose(crossval.joined(per_backbone, ["a", "b"]), [[0.6, 0.8, 0.0, 1.0, 0.0]], atol=1e-7)


def fold_curves(labels, folds, best_epoch, epochs=8, seed=0):
    """Per fold, (epochs, its images, 2) probabilities whose log loss is lowest after best_epoch[k] (1-based):
    right with confidence rising to that epoch and falling after it."""
    rng = np.random.default_rng(seed)
    curves = []
    for k, best in enumerate(best_epoch):
        held = labels[folds == k]
        noise = rng.uniform(-0.05, 0.05, len(held))
        steps = []
        for epoch in range(1, (epochs[k] if isinstance(epochs, list) else epochs) + 1):
            right = np.clip(0.9 - 0.06 * abs(epoch - best) + noise, 0.05, 0.95)
            p = np.where(held == 1, right, 1 - right)
            steps.append(np.stack([1 - p, p], axis=1))
        curves.append(np.stack(steps))
    return curves


def test_each_fold_is_scored_after_the_epochs_the_other_folds_chose():
    """The epoch count is a choice made from the data: the fold it scores has no say in it."""
    labels = np.repeat([0, 1], 30)
    folds = data.make_folds(labels, None, 3, seed=0)
    curves = fold_curves(labels, folds, best_epoch=[2, 6, 6])
    measurement = crossval.epochs_cross_validated(curves, labels, folds)
    assert [choice.epochs for choice in measurement.fold_choices] == [6, 4, 4]  # fold 0 alone peaks at 2
    for k, choice in enumerate(measurement.fold_choices):
        held = folds == k
        np.testing.assert_allclose(measurement.uncalibrated[held], curves[k][choice.epochs - 1])
        others = np.concatenate([curves[j][choice.epochs - 1] for j in range(3) if j != k])
        expected = calibration.fit(others, np.concatenate([labels[folds == j] for j in range(3) if j != k]))
        assert (choice.scaling.scale, choice.scaling.shift) == pytest.approx((expected.scale, expected.shift))
        assert choice.penalty is None and choice.features == "cnn"
        np.testing.assert_allclose(measurement.probabilities[held],
                                   calibration.apply(choice.scaling, curves[k][choice.epochs - 1]))
    assert measurement.final.epochs == 6  # on every fold: what the network trained on every photo takes
    pooled = [measurement.scores[("cnn", epoch)] for epoch in range(1, 9)]
    assert int(np.argmin(pooled)) + 1 == 6
    summary = measurement.summary(labels, ["happy", "sad"])
    assert summary["count"] == 60 and summary["choice"]["epochs"] == 6
    assert summary["candidates"][0] == {"features": "cnn", "epochs": 1, "log_loss": pooled[0]}


def test_a_fold_that_stopped_early_counts_its_last_epoch_after_it():
    labels = np.repeat([0, 1], 30)
    folds = data.make_folds(labels, None, 3, seed=0)
    curves = fold_curves(labels, folds, best_epoch=[7, 7, 2], epochs=[8, 8, 3])
    measurement = crossval.epochs_cross_validated(curves, labels, folds)
    assert measurement.fold_choices[2].epochs == 7
    np.testing.assert_allclose(measurement.uncalibrated[folds == 2], curves[2][-1])
