"""The regression rule: three verdicts from a ratio and its confidence interval, and the interval itself.

A change is judged in its bad direction (slower, less throughput, more memory: from bench/metrics.py)
against a threshold (default 5 %), from the ratio current / baseline and its confidence interval:

- **regression**: the interval shows a change in the bad direction (its near end is past 1) and the
  estimate is at least the threshold;
- **improvement**: the same in the good direction;
- **unchanged**: the whole interval lies within the threshold on both sides: the data show the
  change is smaller than what matters;
- **inconclusive**: anything else: the interval straddles the threshold, so the data cannot tell.
  A gate that cannot tell does not say "pass" (exit code 4, never 0 or 1).

The interval of a sampled metric is a two-stage bootstrap (processes, then repetitions within each,
for each run independently) of the reported statistic's ratio: the median, or total work / total time
for throughputs, drawn as arrays over all resamples at once (bench/measure/bootstrap.py; the metrics of
one case share its resamples: one seed per case). It covers the variation between processes. Between
runs a machine drifts more than within one: the between-run noise (`between_run_sigma`, a standard
deviation of log medians: the history's spread of the case on the same machine, or the two runs' own
spread between processes, whichever is larger; bench/gate/noise.py) widens the interval; without
either, the comparison says so. Within one run, variants measured interleaved are compared through
their paired-round ratios to the reference (bench/run/interleave.py), where that drift cancels.

**Minimum data** (`shortfall`): an interval from too few numbers is narrow by accident (one repetition gives
a zero-width interval), so below a minimum a comparison is *inconclusive*, whatever its interval says, and
its note says why: at least MIN_REPETITIONS repetitions in every process of both runs, and MIN_PROCESSES
processes in each run unless a between-run noise estimate widened the interval (the between-process spread
is what a cross-run interval otherwise lacks); within one run, MIN_ROUNDS paired rounds. Why these numbers:
docs/trust.md (an A/A simulation of this rule).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from bench.gate.result import Status
from bench.measure import bootstrap
from bench.measure.bootstrap import RatioOfSums, RowMedian, Statistic
from bench.measure.latency import throughput_parts
from bench.metrics import METRICS, THROUGHPUTS, Metric
from bench.records.schema import CaseRecord, RawSamples


@dataclass(frozen=True)
class Rule:
    threshold: float = 0.05
    alpha: float = 0.05  # the interval is a (1 - alpha) confidence interval
    n_boot: int = 2000
    seed: int = 0
    metric_thresholds: dict = field(default_factory=dict)
    case_thresholds: dict = field(default_factory=dict)

    @property
    def ci_level(self) -> float:
        return 1 - self.alpha

    def threshold_for(self, record: CaseRecord, metric: str) -> float:
        for key in (record.id, record.variant):
            if key in self.case_thresholds:
                return self.case_thresholds[key]
        return self.metric_thresholds.get(metric, self.threshold)


@dataclass
class Units:
    """What a sampled metric was computed from: rows of `values` ([n, k]) in `groups` (the process of each row);
    `statistic` maps rows [..., n, k] to the reported number (median, or total tokens / total time);
    `requests`: the rows are a serving level's requests from one client (no process stage: MIN_PROCESSES does not
    apply, MIN_REPETITIONS counts requests)."""

    values: np.ndarray
    statistic: Statistic
    groups: np.ndarray
    requests: bool = False

    def stat(self) -> float:
        return self._value

    @functools.cached_property
    def _value(self) -> float:
        return float(self.statistic(self.values))

    @functools.cached_property
    def process_sizes(self) -> np.ndarray:
        """How many rows each process has, in the order of the process ids."""
        return np.unique(self.groups, return_counts=True)[1]

    def per_process(self) -> np.ndarray:
        """The statistic of each process's rows, in the order of the process ids."""
        sizes = self.process_sizes
        if sizes.min() == sizes.max():  # one call for all: the statistic reduces the last two axes
            rows = self.values[np.argsort(self.groups, kind="stable")]
            return np.asarray(self.statistic(rows.reshape(len(sizes), sizes[0], rows.shape[1])), dtype=float)
        return np.array([float(self.statistic(self.values[self.groups == key])) for key in np.unique(self.groups)])

    def resample(self, rng: np.random.Generator, n_boot: int) -> np.ndarray:
        """The statistic over n_boot two-stage resamples: processes with replacement, then rows within each
        (bench/measure/bootstrap.py: all resamples at once)."""
        return self.of_counts(bootstrap.draw_counts(rng, self.groups, n_boot))

    def of_counts(self, counts: np.ndarray) -> np.ndarray:
        """The statistic of each resample given as the count of each row in it ([n_boot, n rows])."""
        return bootstrap.of_counts(self.values, self.statistic, counts)


def units_of(record: CaseRecord, raw: RawSamples | None, metric: str) -> Units | None:
    """The rows a sampled metric or throughput was computed from, with the process of each row; or None."""
    kind = METRICS[metric].kind
    if kind not in ("sampled", "throughput") or raw is None or record.task != "latency" or record.workload is None:
        return None
    reps = len(raw.stamps_ns or raw.ttft_ms)
    groups = np.asarray(raw.process if len(raw.process) == reps else [0] * reps)
    if kind == "sampled" and raw.series(metric):
        values = np.asarray(raw.series(metric), dtype=float)
        if reps == 0 or len(values) % reps:
            return None
        return Units(values.reshape(reps, -1), RowMedian(), groups)
    if kind == "throughput" and metric in THROUGHPUTS and raw.ttft_ms and raw.e2e_ms:
        work = record.workload
        tokens, seconds = throughput_parts(metric, work.batch_size, work.prompt_tokens, work.new_tokens,
                                           np.asarray(raw.ttft_ms) / 1e3, np.asarray(raw.e2e_ms) / 1e3)
        return Units(np.stack([np.full_like(seconds, tokens), seconds], axis=1), RatioOfSums(), groups)
    return None


def bad_change(ratio: float, metric: Metric) -> float:
    """Relative change in the metric's bad direction (positive = worse)."""
    return ratio - 1 if metric.better == "lower" else 1 - ratio


def ratio_ci(base: Units, cur: Units, rule: Rule, seed: int) -> tuple[float, float, float]:
    """(current / baseline, CI low, CI high) of the statistic, from independent two-stage bootstraps.

    The resamples depend only on the seed and each side's processes: the metrics of one case, compared with one
    seed (bench/gate/compare.py), resample the same repetitions, drawn once."""
    cur_counts, base_counts = _resamples(seed, rule.n_boot, tuple(cur.groups.tolist()), tuple(base.groups.tolist()))
    ratios = cur.of_counts(cur_counts) / base.of_counts(base_counts)
    tail = rule.alpha / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return cur.stat() / base.stat(), float(low), float(high)


@functools.lru_cache(maxsize=2)
def _resamples(seed: int, n_boot: int, cur_groups: tuple, base_groups: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The row counts of the current side's resamples, then the baseline's (read-only: shared by the cache)."""
    rng = np.random.default_rng(seed)
    drawn = (bootstrap.draw_counts(rng, np.asarray(groups), n_boot) for groups in (cur_groups, base_groups))
    out = tuple(drawn)
    for counts in out:
        counts.flags.writeable = False
    return out  # type: ignore[return-value]


def widen(ratio: float, low: float, high: float, sigma: float, level: float) -> tuple[float, float]:
    """The interval widened by between-run noise `sigma` (sd of log medians of one case over runs): two runs, so
    sqrt(2) sigma on the log ratio, added in quadrature to each side."""
    z = _z(level)
    extra = z * math.sqrt(2) * sigma
    log_r = math.log(ratio)
    down = math.hypot(log_r - math.log(low), extra)
    up = math.hypot(math.log(high) - log_r, extra)
    return ratio * math.exp(-down), ratio * math.exp(up)


@functools.cache
def _z(level: float) -> float:
    """The standard normal quantile of a two-sided `level` (the stdlib's, as exact as scipy's to 1 ulp, without
    importing scipy into the gate)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


MIN_REPETITIONS = 5  # per process, in each run
MIN_PROCESSES = 2  # per run, unless a between-run noise estimate widened the interval
MIN_ROUNDS = 5  # paired rounds of a within-run comparison


def shortfall(base: Units, cur: Units, widened: bool) -> str:
    """Why two runs' samples are too few for a verdict ('' when they are enough): see the module docstring."""
    problems = []
    for which, units in (("baseline", base), ("current", cur)):
        per_process = units.process_sizes
        if per_process.min() < MIN_REPETITIONS:
            problems.append(f"{which} has {per_process.min()} " +
                            ("request(s)" if units.requests else "repetition(s) in a process"))
        if len(per_process) < MIN_PROCESSES and not widened and not units.requests:
            problems.append(f"{which} was measured in {len(per_process)} process(es)")
    if not problems:
        return ""
    return (f"too little data for a verdict ({'; '.join(problems)}): the gate needs at least {MIN_REPETITIONS} "
            f"repetitions per process and {MIN_PROCESSES} processes per run (or a between-run noise estimate)")


def rounds_shortfall(rounds: int | None) -> str:
    """Why a within-run paired-rounds ratio is too little data for a verdict ('' when it is enough)."""
    if rounds is not None and rounds >= MIN_ROUNDS:
        return ""
    return (f"too little data for a verdict ({rounds or 0} paired round(s)): the gate needs at least {MIN_ROUNDS} "
            f"rounds")


def verdict(ratio: float, low: float | None, high: float | None, metric: Metric, threshold: float,
            too_little: str = "") -> Status:
    """regression, improvement, unchanged or inconclusive (see the module docstring); `too_little`: a shortfall
    (above), which makes it inconclusive."""
    change = bad_change(ratio, metric)
    if low is None or high is None or too_little:
        return Status.INCONCLUSIVE
    near, far = sorted(bad_change(x, metric) for x in (low, high))
    if near > 0 and change >= threshold:
        return Status.REGRESSION
    if far < 0 and -change >= threshold:
        return Status.IMPROVEMENT
    if near > -threshold and far < threshold:
        return Status.UNCHANGED
    return Status.INCONCLUSIVE


def verdict_scalar(baseline: float, current: float, ratio: float, metric: Metric, threshold: float) -> Status:
    """A deterministic scalar (quality, memory): its change against the threshold alone."""
    change = bad_change(ratio, metric)
    if abs(current - baseline) < metric.min_change:
        return Status.UNCHANGED
    if change > threshold:
        return Status.REGRESSION
    if change < -threshold:
        return Status.IMPROVEMENT
    return Status.UNCHANGED
