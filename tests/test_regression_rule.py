"""Error rates of the regression rule, simulated on real latency samples recorded once on this machine.

tests/data/latency_noise_tiny_llama.json holds 300 repetitions of tiny-llama (hf-eager, batch 1,
prompt 64, 32 new tokens, 1 thread) measured with `bench run` on a shared 2-core VM with other jobs
running: heavy-tailed, as real CPU latency is. Each trial draws repetitions from it (with replacement)
under the default repetition policy, one process (bench/measure/policy.py: min 6, max 50, stop when
the TTFT and TPOT medians' 95 % CIs are within +-2 %), for a baseline and a current run; a true slowdown scales the
current draws. Then bench.gate.rule decides, with its default alpha and threshold: regression,
unchanged, improvement or inconclusive (the data cannot tell).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from bench.gate.rule import Rule, Units, ratio_ci, verdict
from bench.measure import policy
from bench.metrics import METRICS
from bench.records.schema import Repetitions

POOL = json.loads((Path(__file__).parent / "data" / "latency_noise_tiny_llama.json").read_text())
ROWS = np.array([POOL["ttft_ms"], POOL["tpot_ms"], POOL["e2e_ms"]]).T
POLICY = Repetitions()
TRIALS = 400


def draw_run(rng, scale: float) -> np.ndarray:
    """Repetitions [n, (ttft, tpot, e2e)] until the default stop rule (bench/measure/policy.py) says stop."""
    reps, progress = [], policy.Progress()
    while True:
        row = ROWS[rng.integers(len(ROWS))] * scale
        reps.append(row)
        progress.add({"ttft_ms": [row[0]], "tpot_ms": [row[1]]}, 0, 0.0)
        if policy.done(progress, POLICY) is not None:
            return np.asarray(reps)


def _median(units):
    return np.median(units.reshape(*units.shape[:-2], -1), axis=-1)


def verdict_rates(scale: float, column: int, metric: str, seed: int) -> dict[str, float]:
    """Share of each verdict over TRIALS simulated baseline/current pairs (one process each)."""
    rng, rule = np.random.default_rng(seed), Rule(n_boot=1000)
    counts: dict[str, int] = {}
    for _ in range(TRIALS):
        base, cur = draw_run(rng, 1.0)[:, column], draw_run(rng, scale)[:, column]
        units = [Units(x[:, None], _median, np.zeros(len(x), dtype=int)) for x in (base, cur)]
        ratio, low, high = ratio_ci(*units, rule, int(rng.integers(2**31)))
        status = verdict(ratio, low, high, METRICS[metric], rule.threshold)
        counts[status] = counts.get(status, 0) + 1
    return {status: n / TRIALS for status, n in counts.items()}


@pytest.mark.slow
def test_a_a_never_says_regression_and_a_true_10_percent_slowdown_is_caught_95_percent():
    same = verdict_rates(1.0, 1, "tpot_ms", seed=11)
    slower = verdict_rates(1.10, 1, "tpot_ms", seed=12)
    print(f"tpot_ms: A/A {same}; 10 % slowdown {slower} ({TRIALS} trials each)")
    assert same.get("regression", 0) <= 0.01  # inconclusive is allowed, and counted above
    assert slower.get("regression", 0) >= 0.95
