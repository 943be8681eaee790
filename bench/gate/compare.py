"""Regression gate: compare a CURRENT run with a BASELINE run (or the variants of one run with its
reference), case by case and metric by metric, with three verdicts (bench/gate/rule.py).

- Sampled metrics (TTFT, TPOT, e2e, inter-token latency) and throughputs (rebuilt per repetition):
  the ratio of the reported statistic with a two-stage bootstrap interval, widened by the between-run
  noise (bench/gate/noise.py: the history's spread of the case on the same machine, or the two runs'
  spread between processes, whichever is larger).
- Within one run (`bench compare RUN`): each variant against the run's reference from the rounds both
  measured, interleaved (`tpot_vs_reference`, `ttft_vs_reference`).
- Scalars (quality, memory): against the threshold alone; single timings (load time): shown, never gated.
- Serving cases: every metric of every load level both runs measured (`case@level`).
Cases measured on different machines (the records' `machine.machine_id`, bench/run/environment.py) are not
compared. Between two runs, a timing whose two sides were measured while the machine was in materially different
states (contended on one side only, other processes' load, clocks, another process on the GPU; a serving level's
client CPU: bench/gate/machine.py) is inconclusive whatever its interval says, unless `--ignore-machine-state`.
Within one run the variants' rounds are interleaved: whatever the machine did, it did to both sides of each paired
ratio, so the paired comparison does not read the machine state.
Between two runs, every flagged case (regression or inconclusive) is attributed (bench/gate/attribution.py): what
changed around its runs and, where both profiled it, which of its operators moved.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict

import numpy as np

from bench.errors import BadInput, ExitCode
from bench.gate import attribution, machine
from bench.gate.noise import BetweenRunNoise, Noise
from bench.gate.result import (
    EXIT_CODES,
    FLAGGED,
    CaseProblem,
    Comparison,
    Confirmation,
    GateResult,
    MetricSummary,
    NotCompared,
    RuleInfo,
    RunRef,
    Status,
    Verdict,
    judge,
)
from bench.gate.rule import Rule, Units, ratio_ci, rounds_shortfall, shortfall, units_of, verdict, verdict_scalar, widen
from bench.metrics import METRICS, PAIRED
from bench.records.rundir import Run
from bench.records.schema import CaseRecord, Estimate, RawSamples, RegressionSettings

__all__ = ["CompareError", "Comparison", "GateResult", "Rule", "compare_runs", "compare_within", "rule_from",
           "units_of"]


class CompareError(BadInput):
    """Bad input (unknown run, unreadable file, bad thresholds): exit code 2."""


def _seed(rule: Rule, case_id: str, metric: str) -> int:
    """One seed per case (or serving level), whatever the metric: the case's metrics then resample the same
    repetitions, drawn once (bench/gate/rule.py `ratio_ci`)."""
    return zlib.crc32(f"{rule.seed}:{case_id}".encode())


def compare_case(base: CaseRecord, cur: CaseRecord, base_raw: RawSamples | None, cur_raw: RawSamples | None,
                 rule: Rule, noise=None, machine_mode: machine.Mode = "compare") -> list[Comparison]:
    """Every metric of one case both runs measured; timings inconclusive where the machine states differ."""
    differs, note = machine.case_difference(base, cur, machine_mode)
    out = []
    for name in METRICS:
        comp = compare_metric(cur.id, cur, name, base.value(name), cur.value(name), units_of(base, base_raw, name),
                              units_of(cur, cur_raw, name), rule, noise)
        if comp is not None:
            out.append(machine.apply(comp, differs, note))
    return out + compare_serving(base, cur, base_raw, cur_raw, rule, machine_mode)


def compare_serving(base: CaseRecord, cur: CaseRecord, base_raw: RawSamples | None, cur_raw: RawSamples | None,
                    rule: Rule, machine_mode: machine.Mode = "compare") -> list[Comparison]:
    """Serving cases: every metric of every load level both runs measured, per level (`case@level`).

    Per-request latencies are compared on the requests' samples (bootstrap resamples requests), the
    level's throughputs, error rate and memory against the threshold; timings inconclusive where the client's
    own CPU differs materially (bench/gate/machine.py)."""
    from bench.serving.results.aggregate import request_units

    if base.serving is None or cur.serving is None:
        return []
    measured = ("ok", "stopped")
    base_levels = {lv.key: lv for lv in base.serving.levels if lv.status in measured}
    out = []
    for level in cur.serving.levels:
        before = base_levels.get(level.key)
        if before is None or level.status not in measured:
            continue
        differs = None if machine_mode == "ignore" else machine.serving_difference(before, level)
        b_req = (base_raw.serving or {}).get(level.key) if base_raw else None
        c_req = (cur_raw.serving or {}).get(level.key) if cur_raw else None
        for name in level.metrics:
            bu = _request_units(request_units(b_req, name) if b_req else None)
            cu = _request_units(request_units(c_req, name) if c_req else None)
            comp = compare_metric(f"{cur.id}@{level.key}", cur, name, before.value(name), level.value(name), bu, cu,
                                  rule)
            if comp is not None:
                out.append(machine.apply(comp, differs))
    return out


def _request_units(found) -> Units | None:
    """A serving level's per-request rows (one client, one process)."""
    return None if found is None else Units(found[0], found[1], np.zeros(len(found[0]), dtype=int), requests=True)


def compare_metric(case: str, cur: CaseRecord, name: str, b: float | None, c: float | None, bu: Units | None,
                   cu: Units | None, rule: Rule, noise=None) -> Comparison | None:
    """One metric of one case (or serving level): None when it is not comparable (missing, or info only).

    `noise(record, metric)`: the between-run noise to widen a cross-run interval by (bench/gate/noise.py), or None
    within one run."""
    metric = METRICS.get(name)
    if metric is None or b is None or c is None or metric.kind == "info":
        return None
    comp = Comparison(case=case, variant=cur.variant, metric=name, unit=metric.unit, better=metric.better or "",
                      method="threshold only", baseline=float(b), current=float(c), ratio=None,
                      threshold=rule.threshold_for(cur, name))
    if bu is not None and cu is not None:
        one_process = len(np.unique(bu.groups)) == 1 and len(np.unique(cu.groups)) == 1
        comp.method = "bootstrap" if one_process else "two-stage bootstrap"
        comp.baseline, comp.current = bu.stat(), cu.stat()
        comp.ratio, comp.ci_low, comp.ci_high = ratio_ci(bu, cu, rule, _seed(rule, case, name))
        comp.n_baseline, comp.n_current = len(bu.values), len(cu.values)
        known: Noise | None = noise(cur, name) if noise is not None else None
        if known is not None:
            comp.between_run_sigma = known.sigma
            comp.ci_low, comp.ci_high = widen(comp.ratio, comp.ci_low, comp.ci_high, known.sigma, rule.ci_level)
            comp.note = known.note
        elif noise is not None:
            comp.note = ("no history of this case on this machine and no case measured in two processes: "
                         "within-run variation only")
        too_little = shortfall(bu, cu, widened=known is not None)
        comp.note = "; ".join(n for n in (too_little, comp.note) if n)
        comp.status = verdict(comp.ratio, comp.ci_low, comp.ci_high, metric, comp.threshold, too_little)
    else:
        comp.ratio = c / b if b else (1.0 if c == b else math.inf)
        if not metric.gated:
            comp.method, comp.status = "not gated", Status.NOT_GATED
            comp.note = "one timing without repetitions: shown, never a regression"
        else:
            comp.status = verdict_scalar(comp.baseline or 0.0, comp.current or 0.0, comp.ratio, metric,
                                         comp.threshold)
            comp.note = "scalar without samples: compared with the threshold only"
    return comp


def rule_from(run: Run, threshold: float | None = None, **kwargs) -> Rule:
    """The rule with the current run's suite thresholds; --threshold overrides the default one."""
    section: RegressionSettings = run.meta.regression
    return Rule(threshold=threshold if threshold is not None else section.threshold,
                metric_thresholds=section.metrics, case_thresholds=section.cases, **kwargs)


def _outcome(comparisons: list[Comparison], failed: list[CaseProblem], what: str) -> tuple[ExitCode, str]:
    """The exit code of the comparisons' verdict (bench/gate/result.py `judge`) and the verdict in words."""
    verdict = judge(comparisons, failed)
    regressions = [c for c in comparisons if c.status == Status.REGRESSION]
    inconclusive = [c for c in comparisons if c.status == Status.INCONCLUSIVE]
    if verdict is Verdict.FAILED_CASES:
        text = f"{len(failed)} failed case(s): the gate cannot vouch for these runs"
    elif verdict is Verdict.NO_DATA:
        text = f"no comparable data ({what})"
    elif verdict is Verdict.REGRESSION:
        text = f"{len(regressions)} regression(s)" + (
            f", {len(inconclusive)} inconclusive{_by_machine(inconclusive)}" if inconclusive else "")
    elif verdict is Verdict.INCONCLUSIVE:
        text = (f"{len(inconclusive)} inconclusive{_by_machine(inconclusive)}: the data cannot tell whether the change "
                f"exceeds its threshold (re-measure, or measure on a quieter machine)")
    else:
        text = "no regression"
    return EXIT_CODES[verdict], text


def _by_machine(inconclusive: list[Comparison]) -> str:
    n = sum(c.machine is not None for c in inconclusive)
    share = "all" if n == len(inconclusive) else f"{n} of them"
    return f" ({share} because the machine's state differed between the runs)" if n else ""


def _result(baseline: Run, current: Run, rule: Rule, comparisons: list[Comparison], not_compared: list[NotCompared],
            what: str, ignored_machine_state: bool = False, **extra) -> GateResult:
    def problems(status: str) -> list[CaseProblem]:
        return [CaseProblem(run=run.run_id, case=r.id, reason=r.reason or "")
                for run in {id(baseline): baseline, id(current): current}.values() for r in run.records
                if r.status == status]

    failed, skipped = problems("failed"), problems("skipped")
    exit_code, text = _outcome(comparisons, failed, what)
    if ignored_machine_state:
        text += "; machine state ignored (--ignore-machine-state)"
    return GateResult(
        baseline=_describe(baseline), current=_describe(current),
        rule=RuleInfo(**asdict(rule), ci_level=rule.ci_level),
        exit_code=exit_code, verdict_text=text, comparisons=comparisons,
        flagged=sorted({c.case.split("@")[0] for c in comparisons if c.status in FLAGGED}),
        summary=geomean_summary(comparisons), not_compared=not_compared, failed=failed, skipped=skipped,
        ignored_machine_state=ignored_machine_state, **extra)


def compare_runs(baseline: Run, current: Run, rule: Rule, history=None,
                 machine_mode: machine.Mode = "compare") -> GateResult:
    """The whole comparison (bench/gate/result.py), with its exit code, verdict and the `flagged` cases.

    `history(record, metric)`: (between-run sd, runs) of a case on its machine from the history, or None; the
    interval is widened by it or by the two runs' spread between processes, whichever is larger.
    `machine_mode` (bench/gate/machine.py): compare the sides' machine states (default); ignore them
    (--ignore-machine-state); or confirm (CURRENT re-measures what an earlier comparison flagged: a case it
    measured contended confirms nothing)."""
    noise = BetweenRunNoise(baseline, current, history)
    base = {r.id: r for r in baseline.records}
    cur = {r.id: r for r in current.records}
    comparisons: list[Comparison] = []
    not_compared: list[NotCompared] = []
    for case_id in [c for c in cur if c in base]:
        b, c = base[case_id], cur[case_id]
        # each record names its machine; where one of the two does not, both runs' environments decide
        fingerprinted = b.machine is not None and c.machine is not None
        machines = (baseline.machine_of(b if fingerprinted else None), current.machine_of(c if fingerprinted else None))
        if not b.ok or not c.ok:
            not_compared.append(NotCompared(case=case_id, baseline=_status(b), current=_status(c)))
        elif machines[0] != machines[1]:
            not_compared.append(NotCompared(
                case=case_id, baseline=f"measured on machine {machines[0]}",
                current=f"measured on machine {machines[1]}: different hardware, not compared"))
        else:
            comparisons += compare_case(b, c, baseline.samples(case_id), current.samples(case_id), rule, noise,
                                        machine_mode)
    return _result(baseline, current, rule, comparisons, not_compared,
                   "no case finished ok in both runs on the same machine",
                   only_in_baseline=sorted(set(base) - set(cur)), only_in_current=sorted(set(cur) - set(base)),
                   ignored_machine_state=machine_mode == "ignore",
                   **attribution.attribute(baseline, current, comparisons))  # why the flagged cases moved




def compare_within(run: Run, rule: Rule) -> GateResult:
    """Each variant against the run's reference, from the rounds both measured interleaved (one run)."""
    comparisons: list[Comparison] = []
    for record in run.records:
        if not record.ok:
            continue
        for metric_name, paired in PAIRED.items():
            estimate = record.metrics.get(paired)
            if not isinstance(estimate, Estimate):
                continue
            metric = METRICS[metric_name]
            comp = Comparison(case=record.id, variant=record.variant, metric=metric_name, unit=metric.unit,
                              better=metric.better or "", method="paired rounds", baseline=None,
                              current=record.value(metric_name), ratio=estimate.value, ci_low=estimate.ci_low,
                              ci_high=estimate.ci_high, threshold=rule.threshold_for(record, metric_name),
                              n_current=record.latency.repetitions if record.latency else None,
                              note=f"against the reference '{record.case.reference}' in the same run: "
                                   f"{estimate.method}")
            too_little = rounds_shortfall(record.latency.rounds if record.latency else None)
            comp.note = "; ".join(n for n in (too_little, comp.note) if n)
            comp.status = verdict(estimate.value, estimate.ci_low, estimate.ci_high, metric, comp.threshold,
                                  too_little)
            comparisons.append(comp)
    return _result(run, run, rule, comparisons, [], "no variant has paired rounds with the reference",
                   within=True)


def confirm(first: GateResult, result: GateResult) -> GateResult:
    """Mark, in a re-measurement's comparison, which of the first comparison's flagged changes it confirms: those
    it calls a regression again (a re-measurement measured contended is inconclusive when compared with
    `machine_mode="confirm"`, so it confirms nothing)."""
    flagged = {(c.case, c.metric): c.status for c in first.with_status(*FLAGGED)}
    again = {(c.case, c.metric): c.status for c in result.comparisons}
    confirmation = [Confirmation(case=case, metric=metric, first=status, again=again.get((case, metric)),
                                 confirmed=status == again.get((case, metric)) == Status.REGRESSION)
                    for (case, metric), status in sorted(flagged.items())]
    confirmed = sum(c.confirmed for c in confirmation)
    text = (f"{result.verdict_text}; re-measured {len(flagged)} flagged comparison(s): {confirmed} regression(s) "
            f"confirmed")
    return result.model_copy(update={"confirmation": confirmation, "verdict_text": text})


def _status(record: CaseRecord) -> str:
    return record.status + (f": {record.reason}" if record.reason else "")


def _describe(run: Run) -> RunRef:
    env = run.meta.environment
    return RunRef(run_id=run.run_id, path=str(run.path), suite=run.meta.suite_name, git_sha=env.git_sha,
                  git_branch=env.git_branch)


def geomean_summary(comparisons: list[Comparison]) -> dict[str, MetricSummary]:
    """Per metric: geometric mean of the current/baseline ratios over cases, and the case count."""
    by_metric: dict[str, list[float]] = {}
    for c in comparisons:
        if c.ratio is not None and 0 < c.ratio < math.inf:
            by_metric.setdefault(c.metric, []).append(c.ratio)
    return {m: MetricSummary(geomean_ratio=math.exp(sum(map(math.log, r)) / len(r)), cases=len(r),
                             unit=METRICS[m].unit, better=METRICS[m].better) for m, r in by_metric.items()}
