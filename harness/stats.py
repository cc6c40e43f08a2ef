"""Paired statistics over per-query values: the tests behind `compare` and the significance marks.

Everything comes from scipy and statsmodels; this module only fixes the conventions (two-sided
tests, delta = B - A, fixed seeds) and the degenerate cases the libraries answer with NaN:
identical inputs get p = 1 (nothing to detect), a constant non-zero difference gets p = 0 from
the t-test (it is certain), fewer than two pairs get NaN and are reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = Sequence[float] | npt.NDArray[np.floating[Any]]

ALPHA = 0.05
RESAMPLES = 10_000
SEED = 0


def _arrays(a: Floats, b: Floats) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be two vectors of one length, not {x.shape} and {y.shape}")
    return x, y


def paired_t(a: Floats, b: Floats) -> tuple[float, float]:
    """Student's paired t-test of B - A: (t, two-sided p)."""
    from scipy import stats

    x, y = _arrays(a, b)
    d = y - x
    if len(d) < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return (0.0, 1.0) if d[0] == 0 else (math.copysign(math.inf, d[0]), 0.0)
    res = stats.ttest_rel(y, x)
    return float(res.statistic), float(res.pvalue)


def randomization(a: Floats, b: Floats, *, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Paired randomization (sign-flip) test of the mean of B - A, two-sided.

    Exact when 2**n <= resamples, else `resamples` random flips with a fixed seed.
    """
    from scipy import stats

    x, y = _arrays(a, b)
    if len(x) < 2:
        return math.nan
    if np.all(x == y):
        return 1.0

    def mean_delta(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(v - u, axis=axis)

    res = stats.permutation_test((x, y), mean_delta, permutation_type="samples", vectorized=True,
                                 n_resamples=resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(res.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels); NaN stays NaN and is not counted."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        adjusted = multipletests([pvalues[i] for i in idx], method="holm")[1]
        for i, p in zip(idx, adjusted, strict=True):
            out[i] = float(p)
    return out


def tost(a: Floats, b: Floats, margin: float) -> float:
    """Two one-sided paired t-tests (statsmodels `ttost_paired`): p for |mean(B - A)| < margin.

    Small p means the two are equivalent within the margin.
    """
    from statsmodels.stats.weightstats import ttost_paired

    if margin <= 0:
        raise ValueError(f"the equivalence margin must be positive, not {margin}")
    x, y = _arrays(a, b)
    d = y - x
    if len(d) < 2:
        return math.nan
    if np.all(d == d[0]):
        return 0.0 if abs(d[0]) < margin else 1.0
    return float(ttost_paired(y, x, -margin, margin)[0])


def mean_ci(a: Floats, b: Floats, level: float = 0.95) -> tuple[float, float]:
    """The t confidence interval of mean(B - A)."""
    from scipy import stats

    x, y = _arrays(a, b)
    d = y - x
    if len(d) < 2:
        return math.nan, math.nan
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    if se == 0:
        return m, m
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * se
    return m - half, m + half


def kendall_tau(x: Floats, y: Floats) -> float:
    """Kendall's tau-b between two scorings of the same items (scipy); NaN when either is constant."""
    from scipy import stats

    u, v = _arrays(x, y)
    if len(u) < 2 or np.all(u == u[0]) or np.all(v == v[0]):
        return math.nan
    return float(stats.kendalltau(u, v).statistic)


@dataclass(frozen=True)
class Paired:
    """A paired comparison of B against A over the same units (queries, or NevIR pairs)."""

    n: int
    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    t: float
    p_t: float
    p_randomization: float
    p_tost: float | None = None  # only when a margin was given
    margin: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired(a: Floats, b: Floats, *, margin: float | None = None,
           resamples: int = RESAMPLES, seed: int = SEED) -> Paired:
    x, y = _arrays(a, b)
    t, p = paired_t(x, y)
    low, high = mean_ci(x, y)
    return Paired(
        n=len(x), mean_a=float(x.mean()) if len(x) else math.nan, mean_b=float(y.mean()) if len(y) else math.nan,
        delta=float((y - x).mean()) if len(x) else math.nan, ci_low=low, ci_high=high, t=t, p_t=p,
        p_randomization=randomization(x, y, resamples=resamples, seed=seed),
        p_tost=None if margin is None else tost(x, y, margin), margin=margin,
    )
