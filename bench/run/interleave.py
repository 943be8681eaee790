"""Interleaved measurement of the variants of one model and workload (a unit of bench/run/plan.py).

Resident (the default): each variant runs in its own worker process (memory stays per case), all of
them loaded side by side and driven round by round through pipes (bench/exec/protocol.py `Driver`). In
each round every variant measures `round_repetitions` generations, in a new random order, while the
others wait, so drift of the machine hits all variants alike. This is done in `processes` fresh sets
of worker processes, one after the other, so the confidence interval of each median covers the
variation between processes, not only between the repetitions inside one (a two-stage bootstrap,
bench/measure/stats.py). Set k of P measures each variant until the stop rule (bench/measure/policy.py)
says k/P of the plan is done, so the last set stops at the target or the caps, and the processes are of
comparable size.

Processes: where variants cannot be resident together (several large models on one GPU), every
round of every variant is a short process of its own, alternating between variants.

`timeout_s` bounds the whole case: the time the runner waits on the case's workers (loading, rounds,
finishing) over all its process sets; a set is started only for the cases that have something left to
measure in it. A variant whose worker crashes, runs past that budget or fails is recorded as failed with
the reason and its output; the others go on. Each variant's ratio to
the reference comes from the rounds both measured (per round: the ratio of their medians).

A unit of a suite with `interleave: models` holds every model's variants of one workload: the same rounds,
and two paired ratios per case where they apply: to the reference variant on its own model
(`*_vs_reference`, as for any unit) and to the same variant on the reference model (`*_vs_reference_model`).
"""
from __future__ import annotations

import json
import math
import os
import random
import select
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from bench.core.process import log_tail
from bench.exec import envs
from bench.exec.protocol import DRIVE_FDS, WorkerResult
from bench.measure import bandwidth, machine, policy, stats
from bench.measure.latency import derive, per_repetition
from bench.metrics import PAIRED, PAIRED_MODEL
from bench.records import safe_files
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, Estimate, LatencyInfo, MetricValue, RawSamples, Summary
from bench.run.spawn import exit_reason, spawn_worker

MAX_METRICS = ("peak_rss_bytes", "peak_rss_delta_bytes", "peak_rss_sampled_bytes", "vm_hwm_bytes",
               "processes_sampled", "cuda_max_allocated_bytes", "cuda_max_reserved_bytes", "nvml_peak_process_bytes")


class WorkerGone(Exception):
    """The worker died, timed out or reported a failure; `result` is what goes into the case's record."""

    def __init__(self, result: WorkerResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass
class Budget:
    """The time a case may take (its `timeout_s`), counted while the runner waits on its workers, every set."""

    limit_s: float
    used_s: float = 0.0

    def left(self) -> float:
        return max(self.limit_s - self.used_s, 0.0)

    def timeout(self, step: str, waited_s: float) -> str:
        if waited_s >= self.limit_s:  # the first step took it all: the message a lone step always had
            return f"timeout: still {step} after {self.limit_s:g} s; killed"
        return (f"timeout: still {step} when the case had used its timeout_s ({self.limit_s:g} s, counted over "
                f"every process set); killed")


class DrivenWorker:
    """One variant's worker process, held open and paced over a pair of pipes."""

    def __init__(self, case: CaseSpec, run: RunDir, process: int, budget: Budget) -> None:
        self.case, self.run, self.budget = case, run, budget
        self.result_file = run.path / "tmp" / f"{case.id}.p{process}.json"
        safe_files.makedirs(self.result_file.parent, run.root)  # no link on the way to the worker's result
        self.result_file.unlink(missing_ok=True)
        commands_r, commands_w = os.pipe()
        replies_r, replies_w = os.pipe()
        log_path = run.log_path(case.id)
        env = {DRIVE_FDS: f"{commands_r},{replies_w}"}
        try:
            with run.open_log(log_path, "ab") as log:
                log.write(f"=== process {process + 1} ===\n".encode())
                log.flush()
                self.proc = spawn_worker(case, run, self.result_file, log, env, (commands_r, replies_w))
        except BaseException:  # MissingEnv (the caller records a skip), or a failed start
            os.close(commands_w)
            os.close(replies_r)
            raise
        finally:  # the worker's ends, now its own
            os.close(commands_r)
            os.close(replies_w)
        self._commands = os.fdopen(commands_w, "w")
        self._replies = os.fdopen(replies_r, "r")

    def _gone(self, reason: str) -> WorkerGone:
        self.kill()
        if self.result_file.exists():  # the worker wrote why it stopped
            try:
                result = WorkerResult.model_validate_json(self.result_file.read_text())
                if result.status != "ok":
                    return WorkerGone(result)
            except ValidationError:
                pass
        return WorkerGone(WorkerResult(status="failed", reason=reason))

    def _reply(self) -> dict:
        began, wait = time.monotonic(), self.budget.left()
        ready, _, _ = select.select([self._replies], [], [], wait)
        self.budget.used_s += time.monotonic() - began
        if not ready:
            raise self._gone(self.budget.timeout("running", wait).replace("; killed", " without answering; killed"))
        line = self._replies.readline()
        if not line:
            self.proc.wait()
            raise self._gone(_exit_reason(self.proc.returncode))
        reply = json.loads(line)
        if "failed" in reply:
            self.proc.wait()
            raise WorkerGone(WorkerResult.model_validate(reply["failed"]))
        return reply

    def ready(self) -> None:
        self._reply()

    def measure(self, repetitions: int) -> tuple[list[list[int]], float]:
        try:
            self._commands.write(json.dumps({"measure": repetitions}) + "\n")
            self._commands.flush()
        except BrokenPipeError:
            self.proc.wait()
            raise self._gone(_exit_reason(self.proc.returncode)) from None
        reply = self._reply()
        return reply["stamps"], reply["seconds"]

    def finish(self, profile: bool) -> WorkerResult:
        """End the worker; `profile`: this is the case's last process, which profiles a profiled case."""
        began, wait = time.monotonic(), self.budget.left()
        try:
            self._commands.write(json.dumps({"finish": True, "profile": profile}) + "\n")
            self._commands.close()
            self.proc.wait(timeout=wait)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            raise self._gone(self.budget.timeout("finishing", wait)) from None
        finally:
            self.budget.used_s += time.monotonic() - began
        if not self.result_file.exists():
            raise self._gone(_exit_reason(self.proc.returncode))
        return WorkerResult.model_validate_json(self.result_file.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def _exit_reason(returncode: int | None) -> str:
    return exit_reason(returncode if returncode is not None else -signal.SIGKILL)


@dataclass
class _Measured:
    """Everything one case measured so far, over all its processes."""

    case: CaseSpec
    stamps: list[list[int]] = field(default_factory=list)
    round: list[int] = field(default_factory=list)
    progress: policy.Progress = field(default_factory=policy.Progress)  # what the stop rule reads
    results: list[WorkerResult] = field(default_factory=list)
    readings: list[machine.Reading] = field(default_factory=list)
    gone: WorkerResult | None = None
    started: float = field(default_factory=time.time)
    rounds: int = 0
    budget: Budget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = Budget(self.case.timeout_s)

    def add(self, stamps: list[list[int]], seconds: float, process: int, round_index: int,
            reading: machine.Reading) -> None:
        self.stamps += stamps
        self.round += [round_index] * len(stamps)
        self.progress.add(per_repetition(stamps), process, seconds)
        self.readings.append(reading)
        self.rounds += 1

    @property
    def process(self) -> list[int]:
        return self.progress.process

    def done(self, process_set: int | None = None) -> bool:
        """Whether the case is gone or the stop rule lets it stop by the end of `process_set` (None: the plan)."""
        return self.gone is not None or policy.done(self.progress, self.case.repetitions, process_set) is not None

    def stop_reason(self) -> str:
        return policy.done(self.progress, self.case.repetitions) or "max_time"


def _measure_round(workers: dict[str, DrivenWorker], measured: dict[str, _Measured], process: int,
                   round_index: int, rng: random.Random, process_set: int | None = None) -> None:
    """One round: every variant not yet done (by the end of `process_set`, _Measured.done) measures
    round_repetitions generations (fewer where that would pass its `max`), in a new random order."""
    order = [case_id for case_id in workers if not measured[case_id].done(process_set)]
    rng.shuffle(order)
    for case_id in order:
        worker, case = workers[case_id], measured[case_id].case
        probe = machine.Probe(worker.proc.pid).start()
        try:
            room = case.repetitions.max - len(measured[case_id].stamps)  # >= 1: a case at its max is done
            stamps, seconds = worker.measure(min(case.repetitions.round_repetitions, room))
        except WorkerGone as gone:
            measured[case_id].gone = gone.result
            continue
        measured[case_id].add(stamps, seconds, process, round_index, probe.stop())


def _start(cases: list[CaseSpec], measured: dict[str, _Measured], run: RunDir, process: int,
           process_set: int | None) -> dict[str, DrivenWorker]:
    """Start a worker per case that has something left to measure by the end of `process_set` and leave them
    all resident. In the first process set one after another (loading and warming up alone: that load time is
    the case's `load_s`); in later sets all at once, as nothing is measured while they load (the load times
    they report are not used)."""
    spawned: dict[str, DrivenWorker] = {}
    for case in cases:
        if measured[case.id].done(process_set):  # gone, or nothing left to measure: no process to start
            continue
        try:
            spawned[case.id] = DrivenWorker(case, run, process, measured[case.id].budget)
            if process == 0:
                spawned[case.id].ready()
        except envs.MissingEnv as exc:
            measured[case.id].gone = WorkerResult(status="skipped", reason=str(exc))
        except WorkerGone as gone:
            measured[case.id].gone = gone.result
            spawned.pop(case.id, None)
    workers: dict[str, DrivenWorker] = {}
    for case_id, worker in spawned.items():
        try:
            if process > 0:
                worker.ready()
            workers[case_id] = worker
        except WorkerGone as gone:
            measured[case_id].gone = gone.result
    return workers


def _finish(workers: dict[str, DrivenWorker], measured: dict[str, _Measured], last: bool) -> None:
    """End the workers; a case's process profiles it when it is the last set or the case measured its plan."""
    for case_id, worker in workers.items():
        try:
            measured[case_id].results.append(worker.finish(profile=last or measured[case_id].done()))
        except WorkerGone as gone:
            measured[case_id].gone = gone.result


def _resident(cases: list[CaseSpec], run: RunDir, measured: dict[str, _Measured], rng: random.Random) -> None:
    policy = cases[0].repetitions
    for process in range(policy.processes):
        workers = _start(cases, measured, run, process, process)
        if not workers:
            continue
        try:
            round_index = 0
            while any(not measured[c].done(process) for c in workers):
                _measure_round(workers, measured, process, round_index, rng, process)
                round_index += 1
        finally:
            _finish(workers, measured, last=process == policy.processes - 1)


def _processes(cases: list[CaseSpec], run: RunDir, measured: dict[str, _Measured], rng: random.Random) -> None:
    """One short process per variant and round, alternating: no two variants resident at once."""
    round_index = 0
    while any(not m.done() for m in measured.values()):
        order = [c for c in cases if not measured[c.id].done()]
        rng.shuffle(order)
        for case in order:
            workers = _start([case], measured, run, round_index, None)
            try:
                _measure_round(workers, measured, round_index, 0, rng)
            finally:
                _finish(workers, measured, last=False)
        round_index += 1


def run_group(cases: list[CaseSpec], run: RunDir) -> Iterator[tuple[CaseRecord, RawSamples | None]]:
    """Measure the variants of one model and workload (with `interleave: models`, of every model) interleaved;
    one record (and samples) per case."""
    measured = {case.id: _Measured(case) for case in cases}
    rng = random.Random(hash(tuple(sorted(measured))) & 0xFFFFFFFF)
    mode = cases[0].repetitions.interleave
    (_resident if mode == "resident" else _processes)(cases, run, measured, rng)
    for m in measured.values():
        yield _record(m, _partners(m, measured), mode, len(cases), run)


@dataclass(frozen=True)
class _Partner:
    """The case another is paired with, round by round, and the metrics its ratios are recorded as."""

    measured: _Measured
    names: dict[str, str]  # metric -> the metric its ratio is recorded as (bench/metrics.py PAIRED, PAIRED_MODEL)
    whom: str  # says in the ratio's method whom it is to


def _partners(m: _Measured, measured: dict[str, _Measured]) -> list[_Partner]:
    """The reference variant on the case's own model; with `interleave: models`, also the same variant on the
    reference model. Only partners that measured (not gone), and never the case itself."""
    found = {(o.case.model, o.case.variant): o for o in measured.values() if o.gone is None}
    case, partners = m.case, []
    reference = found.get((case.model, case.reference or ""))
    if reference is not None and reference is not m:
        partners.append(_Partner(reference, PAIRED, "the reference's"))
    same_variant = found.get((case.reference_model, case.variant)) if case.reference_model else None
    if same_variant is not None and same_variant is not m:
        partners.append(_Partner(same_variant, PAIRED_MODEL, f"{case.variant} on {case.reference_model}'s"))
    return partners


def _rounds_of(m: _Measured, metric: str) -> dict[tuple[int, int], list[float]]:
    series = m.progress.series[metric]
    out: dict[tuple[int, int], list[float]] = {}
    for value, p, r in zip(series, m.process, m.round, strict=True):
        out.setdefault((p, r), []).append(value)
    return out


def _metrics(m: _Measured, derived: dict[str, MetricValue]) -> dict[str, MetricValue]:
    metrics = dict(derived)
    for result in m.results:
        for name in MAX_METRICS:
            value = result.metrics.get(name)
            if isinstance(value, int | float) and value > (_number(metrics.get(name)) or -1):
                metrics[name] = value
    alone = m.results[:1] if m.case.repetitions.interleave == "resident" else m.results  # _start: loaded alone
    loads = [v for r in alone if isinstance(v := r.metrics.get("load_s"), int | float)]
    metrics["load_s"] = statistics.median(loads) if loads else None
    first = m.results[0].metrics
    metrics["baseline_rss_bytes"] = first.get("baseline_rss_bytes")
    for name, value in m.results[-1].metrics.items():  # what else a worker measured (e.g. KV cache bytes): the last's
        metrics.setdefault(name, value)
    return metrics


def _number(value: MetricValue) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _warnings(m: _Measured, info: LatencyInfo) -> list[str]:
    out = []
    target = m.case.repetitions.ci_target
    wide = {name: h for name, h in policy.halfwidths(m.progress, m.case.repetitions.ci_level).items() if h > target}
    if wide and info.stop_reason != "ci_target_met":
        spread = ", ".join(f"{name} +-{100 * h:.1f} %" if math.isfinite(h) else f"{name} (no interval yet)"
                           for name, h in wide.items())
        out.append(f"the 95 % CI of the median ({spread}) is wider than ci_target (+-{100 * target:g} %) after "
                   f"{info.repetitions} repetitions in {info.processes} process(es): processes disagree or "
                   f"repetitions are noisy; raise repetitions.max/max_time_s or measure on a quieter machine")
    if info.machine is not None and info.machine.contended:
        out.append(f"measured under contention: other processes kept {info.machine.other_cpu_load_mean:.2f} of "
                   f"{info.machine.cpus} CPUs busy on average (up to {info.machine.other_cpu_load_max:.2f})")
    return out


def _record(m: _Measured, partners: list[_Partner], mode: str, group_size: int,
            run: RunDir) -> tuple[CaseRecord, RawSamples | None]:
    case = m.case
    wall = time.time() - m.started
    if m.gone is not None or not m.results or not m.stamps:
        gone = m.gone or WorkerResult(status="failed", reason="no repetition was measured")
        record = CaseRecord(case=case, started_at=m.started, wall_seconds=wall, **gone.outcome())
        if record.status == "failed":
            record.output_tail = log_tail(run.log_path(case.id))
        return record, None
    assert case.workload is not None
    samples, derived = derive(m.stamps, case.workload.batch_size, case.workload.prompt_tokens, m.process,
                              case.repetitions.ci_level)
    samples.round = list(m.round)
    metrics = _metrics(m, derived)
    last = m.results[-1]
    description = last.backend
    info = LatencyInfo(repetitions=len(m.stamps), stop_reason=m.stop_reason(), measure_seconds=m.progress.seconds,
                       processes=len(set(m.process)), rounds=m.rounds, interleave=mode if group_size > 1 or
                       case.repetitions.processes > 1 else None, machine=machine.summarize(m.readings))
    info.warnings = _warnings(m, info)
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
    for partner in partners:
        for metric, name in partner.names.items():
            ratio = stats.paired_ratio(_rounds_of(m, metric), _rounds_of(partner.measured, metric),
                                       case.repetitions.ci_level)
            if ratio is not None:
                metrics[name] = Estimate(value=ratio[0], ci_low=ratio[1], ci_high=ratio[2],
                                         ci_level=case.repetitions.ci_level,
                                         method=f"median over {ratio[3]} paired rounds of the ratio of round medians "
                                                f"to {partner.whom}; bootstrap over processes, then rounds")
    record = CaseRecord(case=case, status="ok", started_at=m.started, wall_seconds=wall,
                        worker_seconds=sum(r.worker_seconds or 0 for r in m.results), python=last.python,
                        model_path=last.model_path, metrics=metrics, latency=info, backend=description,
                        not_applicable=not_applicable, profile=last.profile, energy=last.energy)
    return record, samples


def _median(value: MetricValue) -> float | None:
    return value.median if isinstance(value, Summary) else None

