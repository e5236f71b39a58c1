"""metrics: the accuracy interval train prints beside the test accuracy."""
import pytest

from happysad import metrics


def test_wilson_interval_matches_known_values_and_stays_in_range():
    assert metrics.wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert metrics.wilson_interval(4, 5) == pytest.approx((0.3755, 0.9638), abs=1e-4)
    low, high = metrics.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert metrics.wilson_interval(10, 10)[1] == 1.0
    narrow, wide = metrics.wilson_interval(800, 1000), metrics.wilson_interval(40, 50)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more test images, a tighter interval
