"""A/A false-verdict rate of the gate's interval (bench/gate/rule.py) against repetitions per process and
processes per run: the simulation behind the gate's minimum data (MIN_REPETITIONS, MIN_PROCESSES; docs/trust.md).

Two runs of the same code: every repetition is log-normal noise `within` around its process's level, every
process's level log-normal noise `between` around 1. Each pair is compared as `bench compare` does (two-stage
bootstrap of the ratio of medians; with two or more processes, widened by the two runs' pooled spread between
processes, bench/gate/noise.py), with a 5 % threshold, without the minimum; a regression or improvement verdict
is a false one.

    python benchmarks/gate_minimum_data.py WITHIN BETWEEN TRIALS     e.g. 0.03 0.08 150
"""
from __future__ import annotations

import sys

import numpy as np

from bench.gate.result import Status
from bench.gate.rule import Rule, Units, ratio_ci, verdict, widen
from bench.metrics import METRICS


def _median(u: np.ndarray) -> np.ndarray:
    return np.median(u.reshape(*u.shape[:-2], -1), axis=-1)


def simulated_run(rng: np.random.Generator, n: int, processes: int, within: float, between: float) -> Units:
    rows: list[float] = []
    groups: list[int] = []
    for p in range(processes):
        level = np.exp(rng.normal(0, between))
        rows += list(level * np.exp(rng.normal(0, within, n)))
        groups += [p] * n
    return Units(np.asarray(rows).reshape(-1, 1), _median, np.asarray(groups))


def false_verdicts(n: int, processes: int, within: float, between: float, trials: int, seed: int = 1) -> int:
    rng, rule, metric = np.random.default_rng(seed), Rule(n_boot=400), METRICS["tpot_ms"]
    wrong = 0
    for t in range(trials):
        a, b = (simulated_run(rng, n, processes, within, between) for _ in range(2))
        ratio, low, high = ratio_ci(a, b, rule, t)
        if processes >= 2:  # the gate widens a cross-run interval by the runs' pooled between-process spread
            squares = dof = 0.0
            for units in (a, b):
                logs = np.log([np.median(units.values[units.groups == k]) for k in range(processes)])
                squares += float(((logs - logs.mean()) ** 2).sum())
                dof += processes - 1
            low, high = widen(ratio, low, high, (squares / dof) ** 0.5, rule.ci_level)
        wrong += verdict(ratio, low, high, metric, 0.05) in (Status.REGRESSION, Status.IMPROVEMENT)
    return wrong


def main() -> None:
    within, between, trials = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    for processes in (1, 2, 3):
        for n in (1, 2, 3, 5, 8):
            wrong = false_verdicts(n, processes, within, between, trials)
            print(f"within {within:.2f} between {between:.2f}  P={processes} n={n}: false verdicts "
                  f"{wrong}/{trials} = {wrong / trials:.1%}", flush=True)


if __name__ == "__main__":
    main()
