"""Error rates of the regression rule, simulated on real latency samples recorded once on this machine.

tests/data/latency_noise_tiny_llama.json holds 300 repetitions of tiny-llama (hf-eager, batch 1,
prompt 64, 32 new tokens, 1 thread) measured with `bench run` on a shared 2-core VM with other jobs
running: heavy-tailed, as real CPU latency is. Each trial draws repetitions from it (with replacement)
under the default repetition policy, one process (bench/measure/policy.py: min 6, max 50, stop when
the TTFT and TPOT medians' 95 % CIs are within +-2 %), for a baseline and a current run; a true slowdown scales the
current draws. Then bench.gate.rule decides, with its default alpha and threshold: regression,
unchanged, improvement or inconclusive (the data cannot tell).
"""
import importlib.util
import json
import math
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.gate.noise import BetweenRunNoise
from bench.gate.rule import Rule, Units, ratio_ci, shortfall, units_of, verdict, widen
from bench.measure import policy
from bench.measure.bootstrap import RatioOfSums, RowMedian, draw_counts, of_counts
from bench.metrics import METRICS
from bench.records.rundir import Run, load_run
from bench.records.schema import Repetitions
from tests.conftest import ROOT

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


# ------------------------------------------------------------ the vectorised two-stage bootstrap against the loop it
# replaced (bench/measure/bootstrap.py; issue 26): the same statistic exactly, the same distribution within Monte-Carlo
# error, and the same verdicts on recorded and synthetic run pairs

FIXTURES = Path(os.environ.get("BENCH_FIXTURES", ROOT.parent / "shared" / "fixtures"))
CONTENDED = [FIXTURES / "aa-contended-1", FIXTURES / "aa-contended-2"]
HAVE_FIXTURES = all((p / "run.json").is_file() for p in CONTENDED)
needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason=f"the recorded A/A pair is not at {FIXTURES} "
                                    f"(../shared/fixtures beside the checkout, or $BENCH_FIXTURES)")


def loop_resample(self: Units, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """The reference: Units.resample as it was before the vectorised bootstrap (a Python loop over resamples)."""
    keys = np.unique(self.groups)
    if len(keys) == 1:
        picks = rng.integers(0, len(self.values), (n_boot, len(self.values)))
        return self.statistic(self.values[picks])
    members = [np.flatnonzero(self.groups == k) for k in keys]
    out = np.empty(n_boot)
    for b in range(n_boot):
        chosen = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[i][rng.integers(0, len(members[i]), len(members[i]))] for i in chosen])
        out[b] = self.statistic(self.values[rows])
    return out


def synthetic_units(rng: np.random.Generator, sizes: list[int], per_row: int = 1, throughput: bool = False,
                    ids: list[int] | None = None) -> Units:
    """Rows of log-normal values, each process at its own level; `ids`: the process ids (default 0, 1, ...)."""
    ids = ids or list(range(len(sizes)))
    groups = np.repeat(ids, sizes)
    levels = np.repeat(np.exp(rng.normal(0, 0.1, len(sizes))), sizes)[:, None]
    if throughput:
        seconds = levels[:, 0] * np.exp(rng.normal(0, 0.1, len(groups)))
        return Units(np.stack([np.full_like(seconds, 96.0), seconds], axis=1), RatioOfSums(), groups)
    values = (levels * np.exp(rng.normal(0, 0.2, (len(groups), per_row)))).round(3)  # rounded: ties, as real data has
    return Units(values, RowMedian(), groups)


SYNTHETIC_UNITS = {  # name: sizes of the processes, values per row, throughput
    "one process": ([40], 1, False),
    "two processes, ITL-like rows": ([20, 20], 31, False),
    "three equal processes": ([20, 20, 20], 1, False),
    "unequal processes, unsorted ids": ([5, 12, 30], 3, False),
    "twelve processes": ([6] * 12, 1, False),
    "unequal processes, throughput": ([7, 20, 9], 2, True),
}


def test_the_statistics_of_counted_rows_are_the_statistics_of_the_built_resamples():
    """Exact: each resample's median (and ratio of sums, and any other statistic) from its row counts equals the
    statistic of its rows concatenated, ties, unequal processes and many values per row included."""
    rng = np.random.default_rng(3)
    for trial in range(150):
        sizes = list(rng.integers(1, 15, int(rng.integers(1, 5))))
        per_row = int(rng.choice([1, 2, 7, 31]))
        units = synthetic_units(rng, sizes, per_row, ids=list(rng.permutation(len(sizes)) * 3))
        counts = draw_counts(rng, units.groups, 60)
        built = [np.repeat(units.values, row_counts, axis=0) for row_counts in counts]
        assert np.array_equal(RowMedian().of_counts(units.values, counts), [np.median(rows) for rows in built]), trial
        assert np.array_equal(of_counts(units.values, lambda rows: rows.mean(axis=(-2, -1)), counts),
                              [rows.mean() for rows in built])
        work = np.abs(units.values[:, :1]) + 1
        ratio = RatioOfSums().of_counts(np.hstack([work, 2 * work]), counts)
        assert np.allclose(ratio, 0.5, rtol=1e-12, atol=0)


def test_a_resample_draws_whole_processes_then_rows_within_them():
    """Each resample holds as many rows as its drawn processes have (a process drawn twice counts twice), and every row
    is drawn once per resample on average."""
    rng = np.random.default_rng(4)
    sizes = [5, 12, 30]
    groups = np.repeat([7, 3, 5], sizes)
    counts = draw_counts(rng, groups, 20000)
    per_process = np.stack([counts[:, groups == g].sum(axis=1) for g in (7, 3, 5)], axis=1)
    drawn_times = per_process / sizes
    assert np.array_equal(drawn_times, drawn_times.round()) and (drawn_times.sum(axis=1) == 3).all()
    assert abs(counts.mean() - 1) < 0.02 and np.abs(counts.mean(axis=0) - 1).max() < 0.06
    assert set(counts.sum(axis=1)) == {a + b + c for a in sizes for b in sizes for c in sizes}


N_LOOP, N_VECTOR = 4000, 20000


def assert_same_distribution(reference: np.ndarray, draws: np.ndarray, what: str) -> None:
    """The 2.5 %, 50 % and 97.5 % quantiles of `draws` sit where the reference's distribution puts them.

    At each level p, the quantile x of `draws` must satisfy F(x-) <= p <= F(x) under the reference's empirical
    distribution function F (a bootstrap distribution is discrete), up to 4 standard errors of the two Monte-Carlo
    estimates, sqrt(p (1 - p) (1 / N_LOOP + 1 / N_VECTOR)): 0.011 at the interval's ends. Distribution-free, in the
    interval's own terms (its ends are these quantiles); a wrong bootstrap, such as one that pools the processes,
    moves them by far more."""
    reference = np.sort(reference)
    for p in (0.025, 0.5, 0.975):
        x = np.quantile(draws, p, method="inverted_cdf")
        below = np.searchsorted(reference, x, side="left") / len(reference)
        at_or_below = np.searchsorted(reference, x, side="right") / len(reference)
        tolerance = 4 * math.sqrt(p * (1 - p) * (1 / len(reference) + 1 / len(draws)))
        assert below - tolerance <= p <= at_or_below + tolerance, (what, p, below, at_or_below, tolerance)


@pytest.mark.parametrize("name", SYNTHETIC_UNITS)
def test_the_vectorised_bootstrap_has_the_loops_distribution_on_synthetic_units(name):
    sizes, per_row, throughput = SYNTHETIC_UNITS[name]
    ids = [2, 0, 1] if name.endswith("unsorted ids") else None
    units = synthetic_units(np.random.default_rng(5), sizes, per_row, throughput, ids)
    assert_same_distribution(loop_resample(units, np.random.default_rng(1), N_LOOP),
                             units.resample(np.random.default_rng(2), N_VECTOR), name)


def recorded_units(run_dir: Path, metrics: tuple[str, ...]) -> dict[tuple[str, str], Units]:
    run = load_run(run_dir)
    found = {(r.id, m): units_of(r, run.samples(r.id), m) for r in run.records if r.ok for m in metrics}
    return {key: units for key, units in found.items() if units is not None}


@needs_fixtures
def test_the_vectorised_bootstrap_has_the_loops_distribution_on_the_recorded_runs():
    """Every latency case of the recorded pair (2 processes x 20 repetitions), one metric of each statistic: the units'
    distributions, and the ratio current / baseline whose quantiles are the interval the gate reports."""
    metrics = ("ttft_ms", "itl_ms", "decode_tok_s")
    base, cur = (recorded_units(run, metrics) for run in CONTENDED)
    assert len(base) == len(cur) == 12
    for key in base:
        reference = [loop_resample(units, np.random.default_rng(seed), N_LOOP)
                     for seed, units in ((1, cur[key]), (2, base[key]))]
        draws = [units.resample(np.random.default_rng(seed), N_VECTOR)
                 for seed, units in ((3, cur[key]), (4, base[key]))]
        assert_same_distribution(reference[0], draws[0], f"{key} current")
        assert_same_distribution(reference[1], draws[1], f"{key} baseline")
        assert_same_distribution(reference[0] / reference[1], draws[0] / draws[1], f"{key} ratio")


def loop_ratio_ci(base: Units, cur: Units, rule: Rule, seed: int) -> tuple[float, float, float]:
    """The reference: rule.ratio_ci as it was before the vectorised bootstrap, with the loop."""
    rng = np.random.default_rng(seed)
    ratios = loop_resample(cur, rng, rule.n_boot) / loop_resample(base, rng, rule.n_boot)
    low, high = np.percentile(ratios, [rule.alpha / 2 * 100, 100 - rule.alpha / 2 * 100])
    return cur.stat() / base.stat(), float(low), float(high)


def rule_verdicts(baseline: Run, current: Run, interval=ratio_ci, seed: int = 0) -> dict[tuple[str, str], str]:
    """Every sampled metric's verdict as compare_metric (bench/gate/compare.py) reaches it from the rule's functions:
    the bootstrap `interval` of the ratio (one seed per case), widened by the between-run noise, the minimum data,
    the verdict (the machine state is not read: as with --ignore-machine-state)."""
    rule, noise = Rule(), BetweenRunNoise(baseline, current)
    cur = {r.id: r for r in current.records}
    out = {}
    for record in baseline.records:
        for metric in METRICS:
            before = units_of(record, baseline.samples(record.id), metric)
            after = units_of(cur[record.id], current.samples(record.id), metric) if record.id in cur else None
            if before is None or after is None:
                continue
            ratio, low, high = interval(before, after, rule, zlib.crc32(f"{seed}:{record.id}".encode()))
            known = noise(cur[record.id], metric)
            if known is not None:
                low, high = widen(ratio, low, high, known.sigma, rule.ci_level)
            out[(record.id, metric)] = verdict(ratio, low, high, METRICS[metric], rule.threshold,
                                               shortfall(before, after, widened=known is not None))
    return out


def gate_speed_module():
    """benchmarks/gate_speed.py, whose `write_run` writes synthetic runs with bench's record types."""
    spec = importlib.util.spec_from_file_location("gate_speed", ROOT / "benchmarks" / "gate_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNTHETIC_PAIRS = {  # name: (baseline factors, current factors, process sizes, new tokens, between-process sd)
    "A/A, 3 x 20": ([1.0, 1.0], [1.0, 1.0], [20, 20, 20], 8, 0.01),
    "10 % slower, 3 x 20": ([1.0, 1.0], [1.10, 1.10], [20, 20, 20], 8, 0.01),
    "20 % faster, 2 x 10": ([1.0, 1.0], [0.8, 0.8], [10, 10], 8, 0.01),
    "3 % slower, 3 x 20": ([1.0, 1.0], [1.03, 1.03], [20, 20, 20], 8, 0.005),
    "unequal processes, 6 % slower": ([1.0, 1.0], [1.06, 1.0], [6, 25, 12], 8, 0.01),
    "one process, 10 % slower": ([1.0, 1.0], [1.10, 1.0], [30], 8, 0.0),
    "twelve processes, 8 % slower": ([1.0, 1.0], [1.08, 1.0], [5] * 12, 8, 0.02),
    "too few repetitions": ([1.0, 1.0], [1.15, 1.0], [4, 4, 4], 8, 0.01),
    "noisy processes, 10 % slower": ([1.0, 1.0], [1.10, 1.0], [20, 20], 16, 0.08),
}


def run_pairs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """12 pairs: the recorded A/A pair both ways (where the fixtures are), the format-1 run in the repo with itself,
    and the synthetic pairs (real run directories)."""
    pairs = {"format-1 run with itself": (ROOT / "tests" / "data" / "runs" / "v1-fixture",) * 2}
    if HAVE_FIXTURES:
        pairs |= {"recorded A/A pair": (CONTENDED[0], CONTENDED[1]),
                  "recorded pair, reversed": (CONTENDED[1], CONTENDED[0])}
    write_run = gate_speed_module().write_run
    for i, (name, (before, after, sizes, tokens, between)) in enumerate(SYNTHETIC_PAIRS.items()):
        pairs[name] = tuple(write_run(tmp_path, f"{side}{i}", factors, sizes, seed=2 * i + k, new_tokens=tokens,
                                      between=between)
                            for k, (side, factors) in enumerate((("base", before), ("cur", after))))
    return pairs


def test_every_verdict_is_the_loops_on_recorded_and_synthetic_run_pairs(tmp_path):
    """Each pair compared with the vectorised bootstrap and again with the loop (the default 2000 resamples each): the
    same verdict for every case and metric, except where an interval's end lies within Monte-Carlo error of a
    verdict's boundary, so that the loop itself gives either verdict with another seed: there, the vectorised verdict
    must be one the loop gives (and such comparisons must be rare)."""
    pairs = run_pairs(tmp_path)
    seen: Counter = Counter()
    compared, on_the_boundary = 0, []
    for name, (before, after) in pairs.items():
        baseline, current = load_run(before), load_run(after)
        vectorised = rule_verdicts(baseline, current)
        looped = rule_verdicts(baseline, current, loop_ratio_ci)
        differ = [key for key in vectorised if vectorised[key] != looped[key]]
        if differ:  # the loop with other seeds, for the comparisons that differ
            again = [rule_verdicts(baseline, current, loop_ratio_ci, seed) for seed in range(1, 8)]
            for key in differ:
                assert vectorised[key] in {v[key] for v in again}, (name, key, vectorised[key], looped[key])
                on_the_boundary.append((name, key, vectorised[key], looped[key]))
        assert vectorised.keys() == looped.keys() and vectorised, name
        compared += len(vectorised)
        seen.update(vectorised.values())
    print(f"{len(pairs)} run pairs, {compared} comparisons: verdicts {dict(seen)}; differing from the loop's at its "
          f"seed, within Monte-Carlo error of a boundary: {on_the_boundary}")
    assert len(pairs) == 10 + 2 * HAVE_FIXTURES
    assert len(on_the_boundary) <= compared // 50
    assert {"regression", "improvement", "unchanged", "inconclusive"} <= set(seen)
