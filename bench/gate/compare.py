"""Regression gate: compare a CURRENT run with a BASELINE run, case by case and metric by metric.

For a metric with raw samples (TTFT, TPOT, e2e, inter-token latency, and the decode/prefill
throughputs rebuilt per repetition) the effect is the ratio current/baseline of the statistic the
report shows (median; total tokens / total time for throughputs), with a seeded bootstrap CI that
resamples whole repetitions, and a Mann-Whitney U test on the per-repetition values.

The rule (documented in the README): a change is a **regression** when
  1. the rank test finds a difference (two-sided p < alpha, default 0.02) and the point estimate
     lies in the metric's bad direction (from `METRICS[...].better`), and
  2. the bootstrap CI of the change reaches the threshold (default 5 %) in the bad direction, i.e.
     the data cannot show that the change stays below the threshold.
Condition 2 is an equivalence test: a change is forgiven only when it is demonstrably small.
Comparing the point estimate with the threshold instead would detect a true 5 % slowdown only half
of the time; requiring the whole CI beyond it would detect it almost never.

Scalar metrics without samples are compared with the threshold only: quality (perplexity, NLL,
KLD, ...) and memory (bytes; a change must also exceed 1 MiB, the allocator's granularity). Single
timings without repetitions (load time, perplexity evaluation speed) are shown but never gate.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field

from bench.errors import BadInput, ExitCode
from bench.metrics import METRICS, Metric
from bench.records.rundir import Run
from bench.records.schema import CaseRecord, RawSamples, RegressionSettings


class CompareError(BadInput):
    """Bad input (unknown run, unreadable file, bad thresholds): exit code 2."""


@dataclass(frozen=True)
class Rule:
    threshold: float = 0.05
    alpha: float = 0.02
    ci_level: float = 0.95
    n_boot: int = 2000
    seed: int = 0
    metric_thresholds: dict = field(default_factory=dict)
    case_thresholds: dict = field(default_factory=dict)

    def threshold_for(self, record: CaseRecord, metric: str) -> float:
        for key in (record.id, record.variant):
            if key in self.case_thresholds:
                return self.case_thresholds[key]
        return self.metric_thresholds.get(metric, self.threshold)


@dataclass
class Comparison:
    case: str
    variant: str
    metric: str
    unit: str
    better: str
    method: str  # "bootstrap+mann-whitney", "threshold only", "not gated"
    baseline: float | None
    current: float | None
    ratio: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n_baseline: int | None = None
    n_current: int | None = None
    threshold: float = 0.0
    status: str = "unchanged"  # regression | improvement | unchanged | not gated
    note: str = ""


# ---------------------------------------------------------------- per-repetition units of a metric

def units_of(record: CaseRecord, raw: RawSamples | None, metric: str):
    """(units [n_rep, k], statistic, per_rep values) for a metric with raw samples, or None.

    `statistic` maps resampled units [..., n_rep, k] to the reported statistic [...].
    """
    import numpy as np

    kind = METRICS[metric].kind
    if raw is None or record.task != "latency" or record.workload is None:
        return None
    if kind == "sampled" and raw.series(metric):
        values = np.asarray(raw.series(metric), dtype=float)
        reps = len(raw.stamps_ns or raw.ttft_ms)
        if reps == 0 or len(values) % reps:
            return None
        units = values.reshape(reps, -1)

        def median(u):
            return np.median(u.reshape(*u.shape[:-2], -1), axis=-1)
        return units, median, np.median(units, axis=1)
    if kind == "throughput" and raw.ttft_ms and raw.e2e_ms:
        work = record.workload
        ttft, e2e = np.asarray(raw.ttft_ms) / 1e3, np.asarray(raw.e2e_ms) / 1e3
        if metric == "decode_tok_s":
            tokens, seconds = work.batch_size * (work.new_tokens - 1), e2e - ttft
        else:
            tokens, seconds = work.batch_size * work.prompt_tokens, ttft
        units = np.stack([np.full_like(seconds, tokens), seconds], axis=1)

        def ratio_of_sums(u):
            return u[..., 0].sum(axis=-1) / u[..., 1].sum(axis=-1)
        return units, ratio_of_sums, units[:, 0] / units[:, 1]
    return None


def _bad_change(ratio: float, metric: Metric) -> float:
    """Relative change in the metric's bad direction (positive = worse)."""
    return ratio - 1 if metric.better == "lower" else 1 - ratio


def _seed(rule: Rule, case_id: str, metric: str) -> int:
    return zlib.crc32(f"{rule.seed}:{case_id}:{metric}".encode())


def compare_sampled(base_units, cur_units, rule: Rule, metric: Metric, seed: int) -> dict:
    """Ratio of the statistic, its bootstrap CI, Mann-Whitney p and the verdict."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    (bu, stat, b_rep), (cu, _, c_rep) = base_units, cur_units
    rng = np.random.default_rng(seed)
    b_boot = stat(bu[rng.integers(0, len(bu), (rule.n_boot, len(bu)))])
    c_boot = stat(cu[rng.integers(0, len(cu), (rule.n_boot, len(cu)))])
    tail = (1 - rule.ci_level) / 2 * 100
    lo, hi = np.percentile(c_boot / b_boot, [tail, 100 - tail])
    ratio = float(stat(cu) / stat(bu))
    if np.array_equal(b_rep, c_rep) or (np.ptp(np.concatenate([b_rep, c_rep])) == 0):
        p = 1.0
    else:
        p = float(mannwhitneyu(c_rep, b_rep, alternative="two-sided").pvalue)
    return {"ratio": ratio, "ci_low": float(lo), "ci_high": float(hi), "p_value": p,
            "n_baseline": len(bu), "n_current": len(cu)}


def verdict_sampled(c: Comparison, metric: Metric, rule: Rule) -> str:
    assert c.ratio is not None and c.ci_low is not None and c.ci_high is not None and c.p_value is not None
    change = _bad_change(c.ratio, metric)
    bounds = sorted(_bad_change(x, metric) for x in (c.ci_low, c.ci_high))
    if c.p_value < rule.alpha and change > 0 and bounds[1] >= c.threshold:
        return "regression"
    if c.p_value < rule.alpha and change < 0 and bounds[0] <= -c.threshold:
        return "improvement"
    return "unchanged"


def verdict_scalar(c: Comparison, metric: Metric) -> str:
    assert c.ratio is not None and c.current is not None and c.baseline is not None
    change = _bad_change(c.ratio, metric)
    if abs(c.current - c.baseline) < metric.min_change:
        return "unchanged"
    if change > c.threshold:
        return "regression"
    if change < -c.threshold:
        return "improvement"
    return "unchanged"


def compare_case(base: CaseRecord, cur: CaseRecord, base_raw: RawSamples | None, cur_raw: RawSamples | None,
                 rule: Rule) -> list[Comparison]:
    out = []
    for name in METRICS:
        comp = compare_metric(cur.id, cur, name, base.value(name), cur.value(name), units_of(base, base_raw, name),
                              units_of(cur, cur_raw, name), rule)
        if comp is not None:
            out.append(comp)
    return out + compare_serving(base, cur, base_raw, cur_raw, rule)


def compare_serving(base: CaseRecord, cur: CaseRecord, base_raw: RawSamples | None, cur_raw: RawSamples | None,
                    rule: Rule) -> list[Comparison]:
    """Serving cases: every metric of every load level both runs measured, per level (`case@level`).

    Per-request latencies are compared on the requests' samples (bootstrap resamples requests), the
    level's throughputs, error rate and memory against the threshold."""
    from bench.serving.aggregate import request_units

    if base.serving is None or cur.serving is None:
        return []
    measured = ("ok", "stopped")
    base_levels = {lv.key: lv for lv in base.serving.levels if lv.status in measured}
    out = []
    for level in cur.serving.levels:
        before = base_levels.get(level.key)
        if before is None or level.status not in measured:
            continue
        b_req = (base_raw.serving or {}).get(level.key) if base_raw else None
        c_req = (cur_raw.serving or {}).get(level.key) if cur_raw else None
        for name in level.metrics:
            bu = request_units(b_req, name) if b_req else None
            cu = request_units(c_req, name) if c_req else None
            comp = compare_metric(f"{cur.id}@{level.key}", cur, name, before.value(name), level.value(name), bu, cu,
                                  rule)
            if comp is not None:
                out.append(comp)
    return out


def compare_metric(case: str, cur: CaseRecord, name: str, b: float | None, c: float | None, bu, cu,
                   rule: Rule) -> Comparison | None:
    """One metric of one case (or serving level): None when it is not comparable (missing, or info only)."""
    metric = METRICS.get(name)
    if metric is None or b is None or c is None or metric.kind == "info":
        return None
    comp = Comparison(case=case, variant=cur.variant, metric=name, unit=metric.unit, better=metric.better or "",
                      method="threshold only", baseline=float(b), current=float(c), ratio=None,
                      threshold=rule.threshold_for(cur, name))
    if bu is not None and cu is not None:
        comp.method = "bootstrap+mann-whitney"
        comp.baseline, comp.current = float(bu[1](bu[0])), float(cu[1](cu[0]))
        for key, value in compare_sampled(bu, cu, rule, metric, _seed(rule, case, name)).items():
            setattr(comp, key, value)
        comp.status = verdict_sampled(comp, metric, rule)
    else:
        comp.ratio = c / b if b else (1.0 if c == b else math.inf)
        if not metric.gated:
            comp.method, comp.status = "not gated", "not gated"
            comp.note = "one timing without repetitions: shown, never a regression"
        else:
            comp.status = verdict_scalar(comp, metric)
            comp.note = "scalar without samples: compared with the threshold only"
    return comp


def rule_from(run: Run, threshold: float | None = None, **kwargs) -> Rule:
    """The rule with the current run's suite thresholds; --threshold overrides the default one."""
    section: RegressionSettings = run.meta.regression
    return Rule(threshold=threshold if threshold is not None else section.threshold,
                metric_thresholds=section.metrics, case_thresholds=section.cases, **kwargs)


def compare_runs(baseline: Run, current: Run, rule: Rule) -> dict:
    """The whole comparison as a JSON-ready dict, with `exit_code` and `verdict`."""
    base = {r.id: r for r in baseline.records}
    cur = {r.id: r for r in current.records}
    comparisons: list[Comparison] = []
    not_compared = []
    for case_id in [c for c in cur if c in base]:
        b, c = base[case_id], cur[case_id]
        if not b.ok or not c.ok:
            not_compared.append({"case": case_id, "baseline": _status(b), "current": _status(c)})
            continue
        comparisons += compare_case(b, c, baseline.samples(case_id), current.samples(case_id), rule)
    failed = [{"run": run.run_id, "case": r.id, "reason": r.reason or ""}
              for run in (baseline, current) for r in run.records if r.status == "failed"]
    skipped = [{"run": run.run_id, "case": r.id, "reason": r.reason or ""}
               for run in (baseline, current) for r in run.records if r.status == "skipped"]
    regressions = [c for c in comparisons if c.status == "regression"]
    gated = [c for c in comparisons if c.status != "not gated"]
    if failed:
        exit_code, verdict = ExitCode.CASE_FAILED, f"{len(failed)} failed case(s): the gate cannot vouch for these runs"
    elif not gated:
        exit_code, verdict = ExitCode.CASE_FAILED, "no comparable data (no case finished ok in both runs)"
    elif regressions:
        exit_code, verdict = ExitCode.REGRESSION, f"{len(regressions)} regression(s)"
    else:
        exit_code, verdict = ExitCode.OK, "no regression"
    return {
        "baseline": _describe(baseline), "current": _describe(current),
        "rule": {k: v for k, v in asdict(rule).items()},
        "exit_code": int(exit_code), "verdict": verdict,
        "comparisons": [asdict(c) for c in comparisons],
        "summary": geomean_summary(comparisons),
        "only_in_baseline": sorted(set(base) - set(cur)), "only_in_current": sorted(set(cur) - set(base)),
        "not_compared": not_compared, "failed": failed, "skipped": skipped,
    }


def _status(record: CaseRecord) -> str:
    return record.status + (f": {record.reason}" if record.reason else "")


def _describe(run: Run) -> dict:
    env = run.meta.environment
    return {"run_id": run.run_id, "path": str(run.path), "suite": run.meta.suite_name,
            "git_sha": env.git_sha, "git_branch": env.git_branch}


def geomean_summary(comparisons: list[Comparison]) -> dict:
    """Per metric: geometric mean of the current/baseline ratios over cases, and the case count."""
    by_metric: dict[str, list[float]] = {}
    for c in comparisons:
        if c.ratio is not None and 0 < c.ratio < math.inf:
            by_metric.setdefault(c.metric, []).append(c.ratio)
    return {m: {"geomean_ratio": math.exp(sum(map(math.log, r)) / len(r)), "cases": len(r),
                "unit": METRICS[m].unit, "better": METRICS[m].better} for m, r in by_metric.items()}
