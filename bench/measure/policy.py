"""The one repetition stop rule: whether a latency case has measured enough, and why it stopped.

A case measures in `processes` sets of processes (bench/run/interleave.py); by the end of set k of P
it must have measured k/P of the plan: at least min/P repetitions in set k and k/P of `min` in all,
then k/P of `max` or of `max_time_s`, unless the TTFT and TPOT medians' intervals (a two-stage
bootstrap over processes, then repetitions; with one process, order statistics) are already within
`ci_target`. Every set gets its share, so the bootstrap over processes draws from processes of
comparable size. With `process_set=None` the rule asks about the whole plan, and its answer is the
case's recorded stop reason. The interleaved runner and the tests that simulate it call `done`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.measure import stats
from bench.metrics import PRECISION_METRICS
from bench.records.schema import Repetitions

StopReason = str  # "ci_target_met", "max_repetitions" or "max_time" (LatencyInfo.stop_reason)


@dataclass
class Progress:
    """What a case measured so far: per repetition its value of each precision metric and its process."""

    series: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in PRECISION_METRICS})
    process: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, values: Mapping[str, Sequence[float]], process: int, seconds: float) -> None:
        for name in PRECISION_METRICS:
            self.series[name] += list(values[name])
        self.process += [process] * len(values[PRECISION_METRICS[0]])
        self.seconds += seconds

    @property
    def repetitions(self) -> int:
        return len(self.process)


def halfwidths(progress: Progress, level: float) -> dict[str, float]:
    """Half-width of each precision metric's median interval, relative to the median (inf: none yet)."""
    return {name: stats.ci_halfwidth_rel_grouped(values, progress.process, level)
            for name, values in progress.series.items()}


def done(progress: Progress, policy: Repetitions, process_set: int | None = None) -> StopReason | None:
    """Why the case may stop by the end of process set `process_set` (None: the whole plan), or None to go on."""
    n = progress.repetitions
    share = 1.0 if process_set is None else (process_set + 1) / policy.processes
    if n < policy.max:
        if n < math.ceil(policy.min * share):
            return None
        if process_set is not None and progress.process.count(process_set) < math.ceil(policy.min / policy.processes):
            return None
    if all(h <= policy.ci_target for h in halfwidths(progress, policy.ci_level).values()):
        return "ci_target_met"
    if n >= math.ceil(policy.max * share):
        return "max_repetitions"
    if progress.seconds >= policy.max_time_s * share:
        return "max_time"
    return None
