"""Statistics over seeds (:mod:`vaelab.runs.stats`): the 95 % t-interval of a comparison across
seeds (issue 24 item 4), against the published t table and a hand computation."""

from __future__ import annotations

import math

import pytest

from vaelab.runs.stats import stat, t_interval, t_quantile_975


@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042),
                                   (40, 2.021), (60, 2.000), (120, 1.980)])
def test_t_quantile_matches_the_table(df, t):
    """Standard two-sided 95 % values (Student's t table, 3 decimals); the expansion used past
    ν = 30 is within 1e-3 of the table at ν = 40, 60, 120."""
    assert abs(t_quantile_975(df) - t) < 1.1e-3


def test_t_interval_by_hand():
    """Three seeds' paired differences 0.4, 0.5, 0.6: mean 0.5, sd 0.1, half-width
    4.303 · 0.1 / √3 = 0.2484."""
    m, half, n = t_interval([0.4, 0.5, 0.6])
    assert (round(m, 12), n) == (0.5, 3)
    assert half == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-9)
    assert stat([0.4, 0.5, 0.6]).sd == pytest.approx(0.1)


def test_one_value_has_no_interval():
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile_975(0)
