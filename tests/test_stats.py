"""Each figure's 95 % interval over the test images, a mean's over seeds, and the stratified
bootstrap of paired differences (nba_scale/stats.py)."""
import math

import pytest

import numpy as np

from nba_scale.stats import stratified_bootstrap, t_halfwidth, wilson, with_counts


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("k, n", [(0, 2000), (3, 2000), (1000, 2000), (1999, 2000), (2000, 2000), (7, 37)])
def test_wilson_is_the_score_interval(k, n):
    lo, hi = wilson(k, n)
    assert (lo, hi) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)
    assert 0 <= lo <= k / n <= hi <= 1
    assert hi > 0 and lo < 1  # never the degenerate [0, 0] or [1, 1] of the normal approximation


def test_the_interval_narrows_with_more_images():
    widths = [wilson(n // 10, n)[1] - wilson(n // 10, n)[0] for n in (100, 1000, 10000)]
    assert widths[0] > widths[1] > widths[2] and widths[1] == pytest.approx(0.037, abs=0.002)


def test_counts_come_back_from_the_fractions_and_missing_figures_get_no_interval():
    out = with_counts({"asr": 3 / 37, "ba": 0.9, "ra": math.nan}, {"asr": 37, "ba": 2000, "ra": 37})
    assert (out["asr_k"], out["asr_n"], out["ba_k"], out["ba_n"]) == (3, 37, 1800, 2000)
    assert (out["asr_lo"], out["asr_hi"]) == pytest.approx(wilson_by_hand(3, 37))
    assert math.isnan(out["ra_lo"]) and math.isnan(out["ra_hi"]) and out["ra_k"] is None and out["ra_n"] is None
    before = with_counts({"asr_before": 1.0}, {"asr_before": 50}, counts_too=False)
    assert set(before) == {"asr_before", "asr_before_lo", "asr_before_hi"} and before["asr_before_hi"] == 1.0
    assert math.isnan(wilson(0, 0)[0])


def test_the_mean_over_seeds_has_students_interval():
    from scipy.stats import t

    lo, hi = t.interval(0.95, 2, loc=2.0, scale=1.0 / math.sqrt(3))
    assert t_halfwidth([1.0, 2.0, 3.0]) == pytest.approx((hi - lo) / 2) == pytest.approx(2.484, abs=1e-3)
    assert math.isnan(t_halfwidth([0.4]))


def test_the_stratified_bootstrap_weighs_strata_not_cells_and_resamples_within_each():
    """Two attacks, one with three seeds and one with six: the point is the mean of the two
    attacks' means (each attack counts once, as in the tables); a stratum with no spread adds no
    width; the draw is seeded (a report is the same each time)."""
    a = np.array([[0.1, 1.0], [0.2, 1.0], [0.3, 1.0]])
    b = np.array([[0.5, 1.0]] * 6)
    point, lo, hi = stratified_bootstrap([a, b])
    assert point == pytest.approx([0.35, 1.0])
    assert lo[1] == hi[1] == pytest.approx(1.0)  # the second metric never varies
    assert 0.25 < lo[0] < 0.35 < hi[0] < 0.45  # a's spread, halved by the mean over two attacks
    assert lo[0] >= 0.3 - 1e-12 and hi[0] <= 0.4 + 1e-12  # never past a's extremes, averaged with b's 0.5
    again = stratified_bootstrap([a, b])
    assert np.array_equal(again[1], lo) and np.array_equal(again[2], hi)
