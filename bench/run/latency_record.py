"""An interleaved latency case's record, built from what it measured over all its processes (bench/run/interleave.py
fills a `MeasuredCase` per case, round by round).

- The metrics are derived once from every process's stamps (bench/measure/latency.py `derive`); of the values
  each process's worker reported, a peak (`MAX_METRICS`) is the largest, `load_s` the median of the loads done
  alone (the first process set's when resident), `baseline_rss_bytes` the first process's, anything else the
  last process's.
- MBU: the model's bytes per decode step over the median TPOT, against the peak bandwidth the last worker found
  (bench/measure/bandwidth.py).
- Paired ratios: to the reference variant on the case's own model (`*_vs_reference`) and, in a unit of a suite
  with `interleave: models`, to the same variant on the reference model (`*_vs_reference_model`): per round both
  measured, the ratio of their medians; the estimate is the median of those ratios, its interval a bootstrap over
  processes, then rounds (bench/measure/stats.py `paired_ratio`).
- Warnings: an interval still wider than `ci_target` when the case stopped, and a machine kept busy by others.

A case whose worker failed, ran out of time or measured nothing is a failed (or skipped) record with its reason.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.process import log_tail
from bench.exec.protocol import WorkerResult
from bench.measure import bandwidth, machine, policy, stats
from bench.measure.latency import derive, per_repetition
from bench.metrics import PAIRED, PAIRED_MODEL
from bench.records.schema import CaseRecord, CaseSpec, Estimate, LatencyInfo, MetricValue, RawSamples, Summary

MAX_METRICS = ("peak_rss_bytes", "peak_rss_delta_bytes", "peak_rss_sampled_bytes", "vm_hwm_bytes",
               "processes_sampled", "cuda_max_allocated_bytes", "cuda_max_reserved_bytes", "nvml_peak_process_bytes")


@dataclass
class MeasuredCase:
    """Everything one case measured so far, over all its processes: per repetition its stamps, process and round;
    each finished process's result; the machine's state during each round; why it ended early (`gone`)."""

    case: CaseSpec
    stamps: list[list[int]] = field(default_factory=list)
    round: list[int] = field(default_factory=list)
    progress: policy.Progress = field(default_factory=policy.Progress)  # what the stop rule reads
    results: list[WorkerResult] = field(default_factory=list)
    readings: list[machine.Reading] = field(default_factory=list)
    gone: WorkerResult | None = None
    started: float = field(default_factory=time.time)
    rounds: int = 0

    def add(self, stamps: list[list[int]], seconds: float, process: int, round_index: int,
            reading: machine.Reading) -> None:
        """One round's repetitions, measured by process `process` in its round `round_index`."""
        self.stamps += stamps
        self.round += [round_index] * len(stamps)
        self.progress.add(per_repetition(stamps), process, seconds)
        self.readings.append(reading)
        self.rounds += 1

    @property
    def process(self) -> list[int]:
        return self.progress.process

    def stop_reason(self) -> str:
        return policy.done(self.progress, self.case.repetitions) or "max_time"


@dataclass(frozen=True)
class Partner:
    """The case another is paired with, round by round, and the metrics its ratios are recorded as."""

    measured: MeasuredCase
    names: dict[str, str]  # metric -> the metric its ratio is recorded as (bench/metrics.py PAIRED, PAIRED_MODEL)
    whom: str  # says in the ratio's method whom it is to


def partners(m: MeasuredCase, group: Mapping[str, MeasuredCase]) -> list[Partner]:
    """The reference variant on the case's own model; with `interleave: models`, also the same variant on the
    reference model. Only partners that measured (not gone), and never the case itself."""
    found = {(o.case.model, o.case.variant): o for o in group.values() if o.gone is None}
    case, out = m.case, []
    reference = found.get((case.model, case.reference or ""))
    if reference is not None and reference is not m:
        out.append(Partner(reference, PAIRED, "the reference's"))
    same_variant = found.get((case.reference_model, case.variant)) if case.reference_model else None
    if same_variant is not None and same_variant is not m:
        out.append(Partner(same_variant, PAIRED_MODEL, f"{case.variant} on {case.reference_model}'s"))
    return out


def rounds_of(m: MeasuredCase, metric: str) -> dict[tuple[int, int], list[float]]:
    """A precision metric's values per (process, round)."""
    series = m.progress.series[metric]
    out: dict[tuple[int, int], list[float]] = {}
    for value, p, r in zip(series, m.process, m.round, strict=True):
        out.setdefault((p, r), []).append(value)
    return out


def paired_ratios(m: MeasuredCase, partner: Partner) -> dict[str, Estimate]:
    """The case's ratio to `partner` of each paired metric, from the rounds both measured (none where no round
    has both)."""
    level = m.case.repetitions.ci_level
    out = {}
    for metric, name in partner.names.items():
        ratio = stats.paired_ratio(rounds_of(m, metric), rounds_of(partner.measured, metric), level)
        if ratio is not None:
            out[name] = Estimate(value=ratio[0], ci_low=ratio[1], ci_high=ratio[2], ci_level=level,
                                 method=f"median over {ratio[3]} paired rounds of the ratio of round medians "
                                        f"to {partner.whom}; bootstrap over processes, then rounds")
    return out


def combined_metrics(m: MeasuredCase, derived: dict[str, MetricValue]) -> dict[str, MetricValue]:
    """The metrics derived from every process's stamps, with what the processes' workers reported, combined."""
    metrics = dict(derived)
    for result in m.results:
        for name in MAX_METRICS:
            value = result.metrics.get(name)
            if isinstance(value, int | float) and value > (_number(metrics.get(name)) or -1):
                metrics[name] = value
    alone = m.results[:1] if m.case.repetitions.interleave == "resident" else m.results  # the first set loads alone
    loads = [v for r in alone if isinstance(v := r.metrics.get("load_s"), int | float)]
    metrics["load_s"] = statistics.median(loads) if loads else None
    first = m.results[0].metrics
    metrics["baseline_rss_bytes"] = first.get("baseline_rss_bytes")
    for name, value in m.results[-1].metrics.items():  # what else a worker measured (e.g. KV cache bytes): the last's
        metrics.setdefault(name, value)
    return metrics


def _number(value: MetricValue) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def warnings_of(m: MeasuredCase, info: LatencyInfo) -> list[str]:
    """What a reader of the case's numbers should know: an interval wider than ci_target, a contended machine."""
    out = []
    repetitions = m.case.repetitions
    target = repetitions.ci_target
    wide = {name: h for name, h in policy.halfwidths(m.progress, repetitions.ci_level).items() if h > target}
    if wide and info.stop_reason != "ci_target_met":
        spread = ", ".join(f"{name} +-{100 * h:.1f} %" if math.isfinite(h) else f"{name} (no interval yet)"
                           for name, h in wide.items())
        out.append(f"the {100 * repetitions.ci_level:g} % CI of the median ({spread}) is wider than ci_target "
                   f"(+-{100 * target:g} %) after {info.repetitions} repetitions in {info.processes} process(es): "
                   f"processes disagree or repetitions are noisy; raise repetitions.max/max_time_s or measure on a "
                   f"quieter machine")
    if info.machine is not None and info.machine.contended:
        out.append(f"measured under contention: other processes kept {info.machine.other_cpu_load_mean:.2f} of "
                   f"{info.machine.cpus} CPUs busy on average (up to {info.machine.other_cpu_load_max:.2f})")
    return out


def build_record(m: MeasuredCase, group: Mapping[str, MeasuredCase], mode: str,
                 log_path: Path | None) -> tuple[CaseRecord, RawSamples | None]:
    """The record (and raw samples) of case `m`, measured interleaved with the cases of `group` (by case id, itself
    included) in `mode` (resident or processes); `log_path`: its workers' log, whose tail a failed record keeps."""
    case = m.case
    wall = time.time() - m.started
    if m.gone is not None or not m.results or not m.stamps:
        gone = m.gone or WorkerResult(status="failed", reason="no repetition was measured")
        record = CaseRecord(case=case, started_at=m.started, wall_seconds=wall, **gone.outcome())
        if record.status == "failed":
            record.output_tail = log_tail(log_path)
        return record, None
    assert case.workload is not None
    samples, derived = derive(m.stamps, case.workload.batch_size, case.workload.prompt_tokens, m.process,
                              case.repetitions.ci_level)
    samples.round = list(m.round)
    metrics = combined_metrics(m, derived)
    last = m.results[-1]
    description = last.backend
    info = LatencyInfo(repetitions=len(m.stamps), stop_reason=m.stop_reason(), measure_seconds=m.progress.seconds,
                       processes=len(set(m.process)), rounds=m.rounds, interleave=mode if len(group) > 1 or
                       case.repetitions.processes > 1 else None, machine=machine.summarize(m.readings))
    info.warnings = warnings_of(m, info)
    not_applicable: dict[str, str] = {}
    for result in m.results:
        not_applicable.update(result.not_applicable)
    if description is not None:
        tpot = metrics["tpot_ms"]
        rates, unknown = bandwidth.mbu(description.model_size_bytes, _median(tpot), last.peak_bandwidth_gbs,
                                       last.peak_bandwidth_source or "")
        metrics.update(rates)
        not_applicable.update(unknown)
        metrics["model_size_bytes"] = description.model_size_bytes
        if last.peak_bandwidth_gbs is not None and last.peak_bandwidth_source:  # for readers: where the peak is from
            description.peak_memory_bandwidth_source = last.peak_bandwidth_source
    for partner in partners(m, group):
        metrics.update(paired_ratios(m, partner))
    record = CaseRecord(case=case, status="ok", started_at=m.started, wall_seconds=wall,
                        worker_seconds=sum(r.worker_seconds or 0 for r in m.results), python=last.python,
                        model_path=last.model_path, metrics=metrics, latency=info, backend=description,
                        not_applicable=not_applicable, profile=last.profile, energy=last.energy)
    return record, samples


def _median(value: MetricValue) -> float | None:
    return value.median if isinstance(value, Summary) else None
