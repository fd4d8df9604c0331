"""The paired t-test and the incomplete beta function of mmgraph.benchmark.stats, against scipy on fixed
numbers, and against a textbook critical value without scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mmgraph.benchmark.stats import betainc, mean_std, paired_ttest, student_t_sf2

# (a, b) pairs as a benchmark produces them: Recall@20 of two methods over the same seeds
PAIRS = [
    ([0.0912, 0.0934, 0.0921, 0.0950, 0.0917], [0.0871, 0.0899, 0.0902, 0.0883, 0.0890]),   # clear gain
    ([0.0912, 0.0934, 0.0921, 0.0950, 0.0917], [0.0920, 0.0915, 0.0931, 0.0941, 0.0925]),   # noise
    ([0.061, 0.064], [0.059, 0.066]),                                                         # two seeds
    ([0.30, 0.31, 0.29], [0.20, 0.215, 0.19]),                                                # huge t
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
     [1.1, 2.3, 2.7, 4.4, 4.6, 6.9, 6.8, 8.2, 9.5, 9.7]),                                     # df = 9
    ([0.05, 0.04, 0.06, 0.05], [0.07, 0.05, 0.08, 0.06]),                                     # a < b
]


@pytest.mark.parametrize("a,b", PAIRS)
def test_paired_ttest_matches_scipy(a, b):
    stats = pytest.importorskip("scipy.stats")
    ours = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert ours.statistic == pytest.approx(float(ref.statistic), rel=1e-10)
    assert ours.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-15)
    assert ours.df == len(a) - 1 and ours.n == len(a)
    assert ours.mean_diff == pytest.approx(float(np.mean(np.subtract(a, b))))


# scipy warns of catastrophic cancellation on the constant difference below: that degenerate case is the point
@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation:RuntimeWarning")
def test_edge_cases_follow_scipy():
    stats = pytest.importorskip("scipy.stats")
    same = [0.1, 0.2, 0.3]
    assert math.isnan(paired_ttest(same, same).pvalue)                       # no difference at all
    assert math.isnan(float(stats.ttest_rel(same, same).pvalue))
    shifted = [0.25, 0.5, 0.75]
    const = paired_ttest(shifted, [x - 0.25 for x in shifted])               # a constant non-zero difference
    ref = stats.ttest_rel(shifted, [x - 0.25 for x in shifted])
    assert math.isinf(const.statistic) and const.pvalue == float(ref.pvalue) == 0.0
    assert math.isnan(paired_ttest([0.1], [0.2]).pvalue)                     # one pair: no variance
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ttest([0.1, 0.2], [0.1])


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (2.0, 0.5, 0.9), (4.5, 0.5, 0.05), (10.0, 3.0, 0.7),
                                   (0.7, 2.5, 0.999), (50.0, 0.5, 0.95), (1.0, 1.0, 0.4)])
def test_betainc_matches_scipy(a, b, x):
    special = pytest.importorskip("scipy.special")
    assert betainc(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-11, abs=1e-15)


def test_t_distribution_without_scipy():
    """Textbook values: the two-sided 5 % critical values of Student's t, and the closed forms for
    df = 1 (Cauchy: p = 1 - 2 atan(t) / pi) and df = 2 (p = 1 - t / sqrt(2 + t^2))."""
    for df, crit in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert student_t_sf2(crit, df) == pytest.approx(0.05, abs=2e-4)
    for t in (0.3, 1.0, 5.0, 40.0):
        assert student_t_sf2(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-11)
        assert student_t_sf2(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-11)
    assert student_t_sf2(0.0, 4) == pytest.approx(1.0)
    assert betainc(2.0, 3.0, 0.0) == 0.0 and betainc(2.0, 3.0, 1.0) == 1.0
    with pytest.raises(ValueError):
        betainc(0.0, 1.0, 0.5)


def test_mean_std_is_the_sample_std():
    vals = [0.0912, 0.0934, 0.0921, 0.0950, 0.0917]
    mean, std = mean_std(vals)
    assert mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))
    assert math.isnan(mean_std([0.5])[1]) and math.isnan(mean_std([])[0])
