"""Paired comparisons of two methods on the same prompts and seeds."""

from __future__ import annotations

from math import comb


def sign_test_p(won: int, lost: int) -> float:
    """Exact two-sided McNemar (sign) test on the prompts that flipped: the chance of a split at least this uneven
    if a flip were equally likely either way, 2·P(X <= min(won, lost)), X ~ Binomial(won + lost, 1/2), at most 1."""
    n = won + lost
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(won, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)
