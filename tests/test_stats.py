"""The statistics of `compare` and the significance marks, checked by hand and against scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sp

from harness import stats

# Fixed inputs: per-query values of two systems over 10 queries.
A = [0.31, 0.52, 0.44, 0.70, 0.12, 0.58, 0.66, 0.29, 0.81, 0.47]
B = [0.36, 0.61, 0.41, 0.78, 0.25, 0.57, 0.73, 0.40, 0.80, 0.59]


def test_paired_t_is_the_textbook_statistic() -> None:
    d = np.array(B) - np.array(A)
    t_by_hand = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    p_by_hand = 2 * sp.t.sf(abs(t_by_hand), len(d) - 1)
    t, p = stats.paired_t(A, B)
    assert t == pytest.approx(t_by_hand, rel=1e-12)
    assert p == pytest.approx(p_by_hand, rel=1e-9)
    assert p < 0.01  # B is better on 8 of 10 queries


def test_randomization_is_exact_for_small_samples() -> None:
    d = np.array(B) - np.array(A)
    observed = abs(d.mean())
    flips = [abs(np.mean(d * np.array(signs))) >= observed - 1e-12
             for signs in itertools.product((1, -1), repeat=len(d))]
    exact = sum(flips) / len(flips)
    assert stats.randomization(A, B) == pytest.approx(exact, abs=1e-12)


def test_randomization_agrees_with_the_t_test_on_large_samples() -> None:
    rng = np.random.default_rng(7)
    a = rng.random(200)
    b = a + rng.normal(0.02, 0.1, 200)
    p_rand = stats.randomization(a, b)
    _, p_t = stats.paired_t(a, b)
    assert abs(p_rand - p_t) < 0.02
    assert stats.randomization(a, b) == p_rand  # fixed seed: the same p twice


def test_holm_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> monotone .02 .03 .06 .06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(stats.holm([0.01, math.nan])[1])
    assert stats.holm([0.01, math.nan])[0] == pytest.approx(0.01)  # NaN is not counted


def test_tost_is_two_one_sided_t_tests() -> None:
    margin = 0.1
    d = np.array(B) - np.array(A)
    se = d.std(ddof=1) / math.sqrt(len(d))
    p_lower = sp.t.sf((d.mean() + margin) / se, len(d) - 1)  # H0: delta <= -margin
    p_upper = sp.t.cdf((d.mean() - margin) / se, len(d) - 1)  # H0: delta >= +margin
    assert stats.tost(A, B, margin) == pytest.approx(max(p_lower, p_upper), rel=1e-9)
    assert stats.tost(A, B, 0.01) > 0.5  # a mean gain of 0.06 is not within 0.01
    with pytest.raises(ValueError, match="margin"):
        stats.tost(A, B, 0)


def test_kendall_tau() -> None:
    assert stats.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert stats.kendall_tau(A, B) == pytest.approx(sp.kendalltau(A, B).statistic)
    assert math.isnan(stats.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_identical_inputs_are_not_significant_and_are_equivalent() -> None:
    r = stats.paired(A, A, margin=0.01)
    assert (r.delta, r.p_t, r.p_randomization, r.p_tost) == (0.0, 1.0, 1.0, 0.0)
    assert (r.ci_low, r.ci_high) == (0.0, 0.0)


def test_confidence_interval_matches_scipy() -> None:
    low, high = stats.mean_ci(A, B)
    ci = sp.ttest_rel(B, A).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high))


def test_unequal_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        stats.paired([1.0, 2.0], [1.0])
