"""Statistics over seeds: mean, sample standard deviation and the paired t-test (no scipy needed).

The paired t-test compares two methods run with the same seeds: with ``d_s = a_s - b_s`` over the ``n``
shared seeds,

.. math::  t = \\frac{\\bar d}{s_d / \\sqrt{n}}, \\qquad s_d^2 = \\frac{1}{n-1} \\sum_s (d_s - \\bar d)^2,

and the two-sided p-value of Student's t with ``n - 1`` degrees of freedom,
``p = I_{\\nu / (\\nu + t^2)}(\\nu / 2, 1 / 2)`` (the regularised incomplete beta function), computed
here by its continued fraction (modified Lentz). The results agree with ``scipy.stats.ttest_rel``,
including its conventions: ``nan`` for fewer than two pairs or for identical samples, ``p = 0`` for a
constant non-zero difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["mean_std", "TTest", "paired_ttest", "student_t_sf2", "betainc"]


def mean_std(values: Sequence[float]) -> "tuple[float, float]":
    """``(mean, sample std with ddof=1)``; the std of a single value is ``nan``."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    mean = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def _betacf(a: float, b: float, x: float, max_iter: int = 500, eps: float = 1e-15) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))        # even step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got {a}, {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):   # the continued fraction converges fast on this side
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_sf2(t: float, df: float) -> float:
    """Two-sided tail ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class TTest:
    """A paired t-test: ``statistic`` t, ``pvalue`` (two-sided), ``df`` = n - 1, ``n`` pairs, and the
    ``mean_diff`` (a - b)."""
    statistic: float
    pvalue: float
    df: int
    n: int
    mean_diff: float


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Two-sided paired t-test of ``a`` against ``b`` (equal lengths, paired by position), as
    ``scipy.stats.ttest_rel(a, b)``."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diff = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diff)
    mean, sd = mean_std(diff)
    if n < 2:
        return TTest(math.nan, math.nan, max(n - 1, 0), n, mean)
    if sd == 0.0 or math.isnan(sd):
        t = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return TTest(t, student_t_sf2(t, n - 1), n - 1, n, mean)
