"""Summary statistics derived from raw samples: the median's confidence interval, throughput as a ratio of sums,
and the paired ratio of two variants measured in the same rounds.

With one process the median's interval is the order-statistics one below; with several, a two-stage bootstrap
over processes, then repetitions (`hierarchical_median_ci`, as arrays: bench/measure/bootstrap.py). The stop rule
that reads these intervals' half-widths is bench/measure/policy.py.

The confidence interval of the median is distribution-free: the order statistics x(l), x(u) whose
ranks come from the Binomial(n, 1/2) distribution, so that P(x(l) <= median <= x(u)) >= level.
It needs no normality assumption, which latency samples (skewed, with outliers) do not meet.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bench.measure.bootstrap import RowMedian, draw_counts
from bench.records.schema import Summary


def median_ci(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free CI of the median, or None when n is too small for `level` (n < 6 at 95 %)."""
    from scipy.special import bdtr  # the Binomial CDF; scipy.special, not scipy.stats (0.35 s more to import)

    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        return None
    alpha = 1 - level
    # Largest l (1-based) with P(B <= l-1) <= alpha/2, B ~ Binomial(n, 1/2); u = n + 1 - l by symmetry.
    # The CDF rises with k, so l is the count of k in 0..n with P(B <= k) <= alpha/2.
    l = int(np.count_nonzero(bdtr(np.arange(n + 1), n, 0.5) <= alpha / 2))
    if l < 1:
        return None
    return float(x[l - 1]), float(x[n - l])


def summarize(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> Summary:
    """n, median, p90, p99, mean, std (ddof=1), min, max and the median's CI for one metric."""
    x = np.asarray(samples, dtype=float)
    if len(x) == 0:
        return Summary(n=0)
    ci = median_ci(x, level)
    return Summary(
        n=len(x), median=float(np.median(x)), p90=float(np.percentile(x, 90)),
        p99=float(np.percentile(x, 99)), mean=float(x.mean()), std=float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        min=float(x.min()), max=float(x.max()), ci_level=level,
        ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None,
    )


def ci_halfwidth_rel(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> float:
    """Half-width of the median's CI relative to the median (inf when it cannot be computed yet)."""
    ci = median_ci(samples, level)
    med = float(np.median(np.asarray(samples, dtype=float))) if len(samples) else 0.0
    if ci is None or med == 0:
        return math.inf
    return (ci[1] - ci[0]) / 2 / abs(med)


def precise_enough(series: Sequence[Sequence[float]], target_rel: float, level: float = 0.95) -> bool:
    """True when every series' median CI half-width is within target_rel of its median."""
    return all(ci_halfwidth_rel(s, level) <= target_rel for s in series)


def ratio_of_sums(numerators: Sequence[float] | np.ndarray, denominators: Sequence[float] | np.ndarray) -> float | None:
    """Throughput as total work / total time (never a mean of per-run rates)."""
    total = float(np.sum(denominators))
    return float(np.sum(numerators)) / total if total > 0 else None


BOOTSTRAP_RESAMPLES = 1000
HIERARCHICAL_METHOD = ("bootstrap over processes, then over repetitions within each ({n} resamples, seeded): covers "
                       "the variation between processes as well as within them")
ORDER_STATISTICS_METHOD = "distribution-free, from order statistics (one process: variation within it only)"


def _grouped(values: Sequence[float] | np.ndarray, groups: Sequence[int]) -> list[np.ndarray]:
    x, g = np.asarray(values, dtype=float), np.asarray(groups)
    return [x[g == key] for key in np.unique(g)]


def hierarchical_median_ci(values: Sequence[float] | np.ndarray, groups: Sequence[int], level: float = 0.95,
                           resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """CI of the median of values measured in several processes (`groups`): a two-stage bootstrap that draws
    processes with replacement, then values within each drawn process, so the interval widens when processes
    disagree (as arrays over all resamples: bench/measure/bootstrap.py). With one process it is the
    order-statistics interval (`median_ci`)."""
    parts = _grouped(values, groups)
    if len(parts) < 2:
        return median_ci(values, level)
    if min(len(p) for p in parts) < 2:
        return None
    counts = draw_counts(np.random.default_rng(seed), np.asarray(groups), resamples)
    medians = RowMedian().of_counts(np.asarray(values, dtype=float).reshape(-1, 1), counts)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def summarize_grouped(values: Sequence[float] | np.ndarray, groups: Sequence[int], level: float = 0.95) -> Summary:
    """summarize(), with the median's CI accounting for the variation between processes."""
    summary = summarize(values, level)
    if len(set(groups)) < 2:
        return summary.model_copy(update={"ci_method": ORDER_STATISTICS_METHOD})
    ci = hierarchical_median_ci(values, groups, level)
    return summary.model_copy(update={"ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
                                      "ci_method": HIERARCHICAL_METHOD.format(n=BOOTSTRAP_RESAMPLES)})


def ci_halfwidth_rel_grouped(values: Sequence[float] | np.ndarray, groups: Sequence[int],
                             level: float = 0.95) -> float:
    """Half-width of the (hierarchical) median CI relative to the median; inf when it cannot be computed yet."""
    ci = hierarchical_median_ci(values, groups, level, resamples=400)
    med = float(np.median(np.asarray(values, dtype=float))) if len(values) else 0.0
    if ci is None or med == 0:
        return math.inf
    return (ci[1] - ci[0]) / 2 / abs(med)


def paired_ratio(variant: dict[tuple[int, int], list[float]], reference: dict[tuple[int, int], list[float]],
                 level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> tuple[float, float | None, float | None, int] | None:
    """The ratio variant / reference from rounds both measured: per (process, round), the ratio of the two
    medians; the estimate is the median of those ratios, its CI a bootstrap over processes, then rounds.

    Drift that lasts longer than a round hits both sides of a pair alike and cancels in its ratio.
    Returns (estimate, CI low, CI high, pairs) or None when no round has both."""
    keys = sorted(set(variant) & set(reference))
    if not keys:
        return None
    ratios = np.array([np.median(variant[k]) / np.median(reference[k]) for k in keys])
    processes = [k[0] for k in keys]
    ci = hierarchical_median_ci(ratios, processes, level, resamples, seed)
    return float(np.median(ratios)), ci[0] if ci else None, ci[1] if ci else None, len(keys)
