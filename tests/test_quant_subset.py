"""The calibration subset the graph-level techniques measure on (tledge.quant.subset)."""
import numpy as np

from tledge.quant.subset import spread


def test_spread_covers_every_class_of_a_class_ordered_set():
    y = np.array([0] * 124 + [1] * 121)  # the hymenoptera train folder, read class by class
    assert set(y[:32]) == {0}  # what calib[:32] gave the graph rungs
    picked = spread(y, 32)
    assert len(picked) == 32 and set(picked) == {0, 1}
    assert abs(int((picked == 0).sum()) - 16) <= 1  # in proportion
    np.testing.assert_array_equal(spread(np.arange(245), 3), [0, 122, 244])


def test_spread_keeps_small_sets_whole():
    x = np.arange(10)
    np.testing.assert_array_equal(spread(x, 10), x)
    np.testing.assert_array_equal(spread(x, 64), x)
