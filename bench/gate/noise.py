"""Between-run noise of a cross-run comparison: how far a case's median moves from one run to the next.

The gate (bench/gate/compare.py) widens the interval of a cross-run ratio by it (bench/gate/rule.py
`widen`). Two estimates; the larger one is used, and the comparison's note says which:

- **the history**: the standard deviation of the log of the case's per-run medians over earlier runs
  on the same machine (bench/gate/history.py, from MIN_HISTORY_RUNS runs on);
- **the two runs themselves**: the spread of each process's median around the mean of its case's
  process medians (logs), pooled over every case of both runs measured in two or more processes.
  A case's processes are measured at different moments of a run, as two runs are: their spread is
  how far the machine moves from one moment to the next. It is a lower bound of a run's drift, and
  it exists from the first comparison on, before any history does.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.gate.rule import units_of
from bench.records.rundir import Run
from bench.records.schema import CaseRecord

__all__ = ["BetweenRunNoise", "Noise", "pooled_process_sigma"]

History = Callable[[CaseRecord, str], "tuple[float, int] | None"]


@dataclass(frozen=True)
class Noise:
    sigma: float  # standard deviation of log medians, per run
    note: str


def pooled_process_sigma(runs: list[Run], metric: str) -> tuple[float, int] | None:
    """(pooled sd of log process medians around their case's mean, degrees of freedom), or None without any
    case measured in two or more processes."""
    squares, dof = 0.0, 0
    for run in runs:
        for record in run.records:
            units = units_of(record, run.samples(record.id), metric) if record.ok else None
            if units is None:
                continue
            logs = np.log(units.per_process())
            if len(logs) < 2:
                continue
            squares += float(((logs - logs.mean()) ** 2).sum())
            dof += len(logs) - 1
    return (math.sqrt(squares / dof), dof) if dof else None


class BetweenRunNoise:
    """`noise(record, metric)`: the between-run noise to widen a cross-run comparison by, or None."""

    def __init__(self, baseline: Run, current: Run, history: History | None = None) -> None:
        self.runs = [baseline] if baseline is current else [baseline, current]
        self.history = history
        self._pooled: dict[str, tuple[float, int] | None] = {}

    def __call__(self, record: CaseRecord, metric: str) -> Noise | None:
        if metric not in self._pooled:
            self._pooled[metric] = pooled_process_sigma(self.runs, metric)
        pooled = self._pooled[metric]
        known = self.history(record, metric) if self.history is not None else None
        if known is not None and (pooled is None or known[0] >= pooled[0]):
            return Noise(known[0], f"interval widened by the between-run spread of {known[1]} earlier runs of this "
                                   f"case on this machine (sd of log medians {100 * known[0]:.1f} %)")
        if pooled is not None:
            why = ("larger than the history's" if known is not None else
                   "no history of this case on this machine yet" if self.history is not None else "no history given")
            return Noise(pooled[0], f"interval widened by the spread between processes of both runs' cases "
                                    f"(sd of log process medians {100 * pooled[0]:.1f} %, {pooled[1]} degrees of "
                                    f"freedom; {why})")
        return None
