"""Error rates of the regression rule, simulated on real latency samples recorded once on this machine.

tests/data/latency_noise_tiny_llama.json holds 300 repetitions of tiny-llama (hf-eager, batch 1,
prompt 64, 32 new tokens, 1 thread) measured with `bench run` on a shared 2-core VM with other jobs
running: heavy-tailed, as real CPU latency is. Each trial draws repetitions from it (with replacement)
under the default repetition policy (min 6, max 50, stop when the TTFT and TPOT medians' 95 % CIs
are within +-2 %, using bench.stats), for a baseline and a current run; a true slowdown scales the
current draws. Then bench.gate.compare's rule decides, with its default alpha and threshold.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from bench.gate.compare import Comparison, Rule, compare_sampled, verdict_sampled
from bench.measure import stats
from bench.metrics import METRICS
from bench.records.schema import Repetitions

POOL = json.loads((Path(__file__).parent / "data" / "latency_noise_tiny_llama.json").read_text())
ROWS = np.array([POOL["ttft_ms"], POOL["tpot_ms"], POOL["e2e_ms"]]).T
POLICY = Repetitions()
TRIALS = 400


def draw_run(rng, scale: float) -> np.ndarray:
    """Repetitions [n, (ttft, tpot, e2e)] until the default stopping rule says stop."""
    reps = []
    while True:
        reps.append(ROWS[rng.integers(len(ROWS))] * scale)
        a = np.asarray(reps)
        if len(a) >= POLICY.min and stats.precise_enough([a[:, 0], a[:, 1]], POLICY.ci_target, POLICY.ci_level):
            return a
        if len(a) >= POLICY.max:
            return a


def _median(units):
    return np.median(units.reshape(*units.shape[:-2], -1), axis=-1)


def regression_rate(scale: float, column: int, metric: str, seed: int) -> float:
    rng, rule = np.random.default_rng(seed), Rule(n_boot=1000)
    flagged = 0
    for _ in range(TRIALS):
        base, cur = draw_run(rng, 1.0)[:, column], draw_run(rng, scale)[:, column]
        result = compare_sampled((base[:, None], _median, base), (cur[:, None], _median, cur), rule, METRICS[metric],
                                 int(rng.integers(2**31)))
        comp = Comparison(case="sim", variant="", metric=metric, unit="ms", better="lower", method="", baseline=0,
                          current=0, ratio=None, threshold=rule.threshold)
        for key, value in result.items():
            setattr(comp, key, value)
        flagged += verdict_sampled(comp, METRICS[metric], rule) == "regression"
    return flagged / TRIALS


@pytest.mark.slow
def test_a_a_false_alarms_at_most_1_percent_and_a_true_5_percent_slowdown_is_caught_95_percent():
    false_alarm = regression_rate(1.0, 1, "tpot_ms", seed=11)
    detection = regression_rate(1.05, 1, "tpot_ms", seed=12)
    print(f"tpot_ms: A/A false alarms {false_alarm:.2%}, 5 % slowdown detected {detection:.2%} ({TRIALS} trials each)")
    assert false_alarm <= 0.01
    assert detection >= 0.95
