"""marks: the unsure band and the fits-no-class distance, the rules predict, serve and review share."""
import numpy as np
import pytest

from happysad import crossval, marks


def test_unsure_is_a_band_around_the_threshold_and_between_the_two_highest_of_more_classes():
    two = np.array([[0.55, 0.45], [0.62, 0.38], [0.2, 0.8], [0.48, 0.52]])
    np.testing.assert_array_equal(marks.unsure(two, 0.5, 0.2), [True, False, False, True])
    np.testing.assert_array_equal(marks.unsure(two, 0.75, 0.2), [False, False, True, False])
    three = np.array([[0.4, 0.35, 0.25], [0.7, 0.2, 0.1]])
    np.testing.assert_array_equal(marks.unsure(three, 0.5, 0.2), [True, False])
    assert marks.unsure_reason(three[0], ["a", "b", "c"]) == "a 0.40 against b 0.35"


def test_distances_are_cosine_to_the_nearest_centre_and_a_class_of_two_kinds_keeps_both():
    rng = np.random.default_rng(0)
    kinds = np.eye(4)[[0, 1, 2]] * 5  # class 0 holds two kinds of picture (directions 0 and 1), class 1 one
    vectors = np.concatenate([kinds[0] + rng.normal(0, 0.3, (40, 4)), kinds[1] + rng.normal(0, 0.3, (40, 4)),
                              kinds[2] + rng.normal(0, 0.3, (40, 4))])
    labels = [0] * 80 + [1] * 40
    centres = marks.class_centres(vectors, labels, 2)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0)
    # A picture of either kind of class 0 is close to a centre, where one mean of the class would lie between
    # the two kinds, 45 degrees from both; a picture unlike all three is far.
    near = marks.distances(kinds[:3] + 0.1, centres)
    assert near.max() < 0.02
    assert marks.distances(np.array([[0, 0, 0, 1.0]]), centres)[0] > 0.8


def test_the_limit_leaves_out_the_share_asked_for_and_alike_pictures_in():
    held_out = np.linspace(0.1, 0.5, 101)
    assert marks.far_limit(held_out, 0.04) == pytest.approx(0.484)  # 4 of the 101 lie beyond it
    assert marks.far_limit(np.full(50, 0.2)) == pytest.approx(0.3)  # no spread: FAR_RATIO x the median


def test_a_domain_survives_the_record_and_marks_the_far():
    domain = marks.Domain(crossval.unit(np.array([[1.0, 0.0], [0.0, 1.0]])), 0.2)
    again = marks.Domain.from_record(domain.to_record())
    np.testing.assert_allclose(again.centres, domain.centres, atol=1e-6)
    assert again.limit == domain.limit and marks.Domain.from_record({}) is None
    # What it reads is kept; a record written before the CNN read its blocks' statistics reads the output layer's input.
    assert again.reads == marks.OUTPUT_LAYER_INPUT and "reads" not in domain.to_record()
    blocks = marks.Domain(domain.centres, 0.2, reads=marks.BLOCK_STATISTICS)
    assert marks.Domain.from_record(blocks.to_record()).reads == marks.BLOCK_STATISTICS
    found, far = again.far(np.array([[1.0, 0.1], [1.0, 1.0]]))
    assert list(far) == [False, True] and found[1] == pytest.approx(1 - np.cos(np.pi / 4))


def test_out_of_fold_distances_never_use_the_vectors_own_fold():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    labels, folds = [0, 0, 1, 1, 0], [0, 1, 0, 1, 2]
    held = marks.out_of_fold_distances(vectors, labels, folds, 2)
    # The last vector's own fold would pull class 0's centre toward it; without it the centre is (1, 0).
    assert held[4] == pytest.approx(1 - np.cos(np.pi / 4), abs=1e-6)


def test_a_domain_of_some_columns_measures_only_those_and_keeps_them_in_the_record():
    """Beside a face network, only the picture backbone's columns count: what the others hold cannot move the
    distance, and the model's record says which columns were measured."""
    rng = np.random.default_rng(0)
    photos = np.concatenate([rng.normal(1.0, 0.1, (40, 4)), rng.normal(0.0, 1.0, (40, 3))], axis=1)
    columns = ((0, 4),)
    domain = marks.Domain(marks.class_centres(marks.picked(photos, columns), np.arange(40) % 2, 2), 0.2, columns)
    again = marks.Domain.from_record(domain.to_record())
    assert again.columns == columns and domain.to_record()["columns"] == [[0, 4]]
    unlike = np.concatenate([rng.normal(0.0, 1.0, (5, 4)), photos[:5, 4:]], axis=1)
    other_rest = np.concatenate([photos[:5, :4], rng.normal(5.0, 1.0, (5, 3))], axis=1)
    np.testing.assert_allclose(again.far(other_rest)[0], again.far(photos[:5])[0])
    assert not again.far(photos[:5])[1].any() and again.far(unlike)[1].all()
    assert "columns" not in marks.Domain(domain.centres, 0.2).to_record()
