"""Statistics checked against known answers: binomial order-statistic ranks, summaries, throughput."""
import numpy as np
import pytest

from bench.measure import stats


@pytest.mark.parametrize("n, ranks", [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (50, (18, 33))])
def test_median_ci_uses_the_textbook_order_statistics(n, ranks):
    samples = np.arange(1, n + 1, dtype=float)[::-1]  # unsorted input, values equal to their rank
    assert stats.median_ci(samples) == ranks


def test_median_ci_is_undefined_below_six_samples_at_95_percent():
    assert stats.median_ci([1, 2, 3, 4, 5]) is None
    assert stats.ci_halfwidth_rel([1, 2, 3, 4, 5]) == float("inf")


def test_median_ci_covers_the_true_median_at_least_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true_median = np.log(2)  # exponential(1): skewed like latency samples
    draws = rng.exponential(size=(4000, 15))
    hits = sum(lo <= true_median <= hi for lo, hi in map(stats.median_ci, draws))
    assert hits / len(draws) >= 0.95


def test_summarize_known_samples():
    s = stats.summarize(list(range(1, 11)))
    assert s.n == 10 and s.median == 5.5 and s.mean == 5.5
    assert s.std == pytest.approx(3.0276503540974917)
    assert s.p90 == pytest.approx(9.1) and s.p99 == pytest.approx(9.91)
    assert (s.ci_low, s.ci_high) == (2.0, 9.0)


def test_precise_enough_compares_ci_halfwidth_with_the_target():
    tight = [100.0] * 3 + [100.5] * 3 + [99.5] * 3  # CI [99.5, 100.5]: +-0.5 %
    assert stats.ci_halfwidth_rel(tight) == pytest.approx(0.005)
    assert stats.precise_enough([tight], 0.01)
    assert not stats.precise_enough([tight, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]], 0.01)


def test_throughput_is_total_tokens_over_total_time_not_mean_of_rates():
    tokens, seconds = [100, 100], [1.0, 4.0]
    assert stats.ratio_of_sums(tokens, seconds) == 40.0  # the mean of rates would say 62.5
    assert stats.ratio_of_sums([1], [0.0]) is None
