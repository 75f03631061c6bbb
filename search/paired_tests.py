"""One-sided paired tests for two models scored on the same clips, written out exactly.

No scipy here: the binomial tails are summed exactly (integers for p = 1/2, log space
otherwise) and the signed-rank test uses its normal approximation with tie correction.
"""

from __future__ import annotations

import math

import numpy as np


def binom_upper_tail(k: int, n: int, p: float = 0.5) -> float:
    """Return P(X >= k) for X ~ Binomial(n, p), computed exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.5:  # exact integer arithmetic: no rounding at all
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def mcnemar_worse(trial: np.ndarray, reference: np.ndarray) -> tuple[int, int, float]:
    """Return (b, c, p): b clips only the reference gets right, c only the trial; p of b >= seen.

    p = P(Binom(b + c, 1/2) >= b), the exact one-sided McNemar test that the trial is worse.
    """
    trial, reference = np.asarray(trial, bool), np.asarray(reference, bool)
    b = int(np.sum(reference & ~trial))
    c = int(np.sum(trial & ~reference))
    return b, c, binom_upper_tail(b, b + c)


def wilcoxon_greater(diff: np.ndarray) -> tuple[float, float, int]:
    """Return (z, p, n) of the one-sided signed-rank test that diff tends to be above 0.

    Zero differences are dropped (Wilcoxon's rule), tied |diff| share their mean rank, the
    variance is tie-corrected and z carries a continuity correction of 1/2.
    """
    d = np.asarray(diff, dtype=np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 0.0, 1.0, 0
    magnitude = np.abs(d)
    order = np.argsort(magnitude, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(1, n + 1)
    _, inverse, counts = np.unique(magnitude, return_inverse=True, return_counts=True)
    rank_sums = np.bincount(inverse, weights=ranks)
    ranks = (rank_sums / counts)[inverse]  # ties share the mean of their ranks
    w_plus = float(ranks[d > 0].sum())
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(counts**3 - counts)) / 48
    if var <= 0:
        return 0.0, 1.0, n
    z = (w_plus - mean - 0.5) / math.sqrt(var)
    return z, 0.5 * math.erfc(z / math.sqrt(2)), n


def paired_standard_error(diff: np.ndarray) -> float:
    """Return the standard error of the mean of paired differences (0 for fewer than 2)."""
    d = np.asarray(diff, dtype=np.float64)
    return float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
