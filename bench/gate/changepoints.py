"""Change points in a metric's history: binary segmentation on per-run medians, with a minimum effect.

Method: find the split of the series that most reduces the sum of squared deviations from the
segment means (L2 binary segmentation). Keep it when both sides have at least `min_size` runs, the
means differ by at least `min_effect` relative to the left mean, and the difference is at least
`z` standard errors (pooled within-segment standard deviation). Then split each side again.
Small and explainable; it finds level shifts, not slow drifts.
"""
from __future__ import annotations

import math


def _mean(xs):
    return sum(xs) / len(xs)


def _sse(xs):
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs)


def _best_split(xs, min_size):
    """The k that most reduces the squared deviations: sse(xs) - sse(xs[:k]) - sse(xs[k:]), which equals
    k (n - k) / n * (mean(xs[:k]) - mean(xs[k:]))**2; from prefix sums of the centred values, O(n) (a year of
    nights is 365 values per series, and the dashboard has hundreds of series)."""
    n = len(xs)
    centre = _mean(xs)
    total = sum(x - centre for x in xs)
    best, best_k, left = None, None, 0.0
    for k in range(1, n - min_size + 1):
        left += xs[k - 1] - centre
        if k < min_size:
            continue
        gain = k * (n - k) / n * (left / k - (total - left) / (n - k)) ** 2
        if best is None or gain > best:
            best, best_k = gain, k
    return best_k


def _accepted(left, right, min_effect, z) -> bool:
    ml, mr = _mean(left), _mean(right)
    if ml == 0 or abs(mr - ml) / abs(ml) < min_effect:
        return False
    dof = len(left) + len(right) - 2
    pooled = math.sqrt((_sse(left) + _sse(right)) / dof) if dof > 0 else 0.0
    se = pooled * math.sqrt(1 / len(left) + 1 / len(right))
    return se == 0 or abs(mr - ml) / se >= z


def change_points(values: list[float], min_effect: float = 0.05, min_size: int = 2, z: float = 3.0,
                  offset: int = 0) -> list[int]:
    """Indices i where a new level starts (values[i] is the first run of the new segment)."""
    xs = list(values)
    if len(xs) < 2 * min_size:
        return []
    k = _best_split(xs, min_size)
    if k is None or not _accepted(xs[:k], xs[k:], min_effect, z):
        return []
    return (change_points(xs[:k], min_effect, min_size, z, offset) + [offset + k]
            + change_points(xs[k:], min_effect, min_size, z, offset + k))
