"""marks: the unsure band and the fits-no-class distance, the rules predict, serve and review share."""
import numpy as np
import pytest

from happysad import marks


def test_unsure_is_a_band_around_the_threshold_and_between_the_two_highest_of_more_classes():
    two = np.array([[0.55, 0.45], [0.62, 0.38], [0.2, 0.8], [0.48, 0.52]])
    np.testing.assert_array_equal(marks.unsure(two, 0.5, 0.2), [True, False, False, True])
    np.testing.assert_array_equal(marks.unsure(two, 0.75, 0.2), [False, False, True, False])
    three = np.array([[0.4, 0.35, 0.25], [0.7, 0.2, 0.1]])
    np.testing.assert_array_equal(marks.unsure(three, 0.5, 0.2), [True, False])
    assert marks.unsure_reason(three[0], ["a", "b", "c"]) == "a 0.40 against b 0.35"


def test_distances_are_cosine_to_the_nearest_class_centre():
    vectors = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 3.0], [0.1, 1.0]])
    centres = marks.class_centres(vectors, [0, 0, 1, 1], 2)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0)
    found = marks.distances(np.array([[5.0, 0.05], [1.0, 1.0]]), centres)
    assert found[0] < 0.01 and found[1] == pytest.approx(1 - np.cos(np.pi / 4), abs=0.05)


def test_the_limit_is_median_plus_z_robust_deviations_and_ignores_the_far_ones_it_should_find():
    rng = np.random.default_rng(0)
    held_out = np.r_[rng.normal(0.3, 0.02, 200), [0.9, 0.95]]  # two outliers cannot widen the spread
    domain = marks.fit_domain(np.eye(2), held_out, far_z=3.5)
    assert domain.median == pytest.approx(0.3, abs=0.01) and domain.spread == pytest.approx(0.02, rel=0.2)
    assert domain.limit == pytest.approx(max(domain.median + 3.5 * domain.spread, 1.5 * domain.median))
    alike = marks.fit_domain(np.eye(2), np.full(50, 0.2))  # no spread: the ratio keeps alike pictures in
    assert alike.limit == pytest.approx(0.3)


def test_a_domain_survives_the_record():
    domain = marks.fit_domain(marks.class_centres(np.eye(3)[:, :2] + 0.1, [0, 1, 1], 2), [0.1, 0.2, 0.3], 2.0)
    again = marks.Domain.from_record(domain.to_record())
    np.testing.assert_allclose(again.centres, domain.centres, atol=1e-6)
    assert again.limit == pytest.approx(domain.limit) and marks.Domain.from_record({}) is None


def test_out_of_fold_distances_never_use_the_vectors_own_fold():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    labels, folds = [0, 0, 1, 1, 0], [0, 1, 0, 1, 2]
    held = marks.out_of_fold_distances(vectors, labels, folds, 2)
    # The last vector's own fold would pull class 0's centre toward it; without it the centre is (1, 0).
    assert held[4] == pytest.approx(1 - np.cos(np.pi / 4), abs=1e-6)
