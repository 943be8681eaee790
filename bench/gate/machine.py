"""Verdicts that know the machine: whether the two sides of a timing comparison were measured on a machine in
materially different states, which makes any change between them inconclusive, whatever its interval says.

A latency case records what else its machine did while it was measured (`LatencyInfo.machine`, a
`MachineState`, bench/measure/machine.py); a serving level records the client's own CPU (`serve_client_cpu`).
Two sides differ materially (each reason names both sides' figures) when:

- one was measured contended (others kept >= 0.5 CPU busy on average) and the other was not;
- other processes' mean load differs by >= `LOAD_CPUS` CPUs;
- a CPU clock (the lowest or the highest MHz seen) or the GPU's lowest SM clock differs by >= `CLOCK_SHARE`;
- other processes held a context on the GPU on one side only;
- the measured process's run-queue wait share (of its ready time, the share it waited for a CPU: schedstat)
  implies a slowdown from waiting alone, 1 / (1 - share), that differs by >= `CLOCK_SHARE` between the sides:
  the machine alone could explain a change of the gate's default threshold. It is the one figure that still
  tells states apart on a saturated machine, where the others' load flattens near the CPU count;
- serving: the client's own CPU differs by >= `LOAD_CPUS` CPUs (to the server, the client is another process).

The thresholds come from measurements on the project's 2-core machine (benchmarks/machine_thresholds.py, the
figures in docs/comparing-and-ci.md). Where a side has no recorded state (a run from before bench recorded it,
a perplexity case) nothing is compared; `missing_note` says so only where the other side was contended.
Memory and quality metrics are never affected: only timings (`is_timing`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from bench.gate.result import Comparison, MachineDifference, Status
from bench.metrics import METRICS
from bench.records.schema import CaseRecord, MachineState, ServingLevel

LOAD_CPUS = 0.5  # ~0.5 CPU more load slowed a 1-thread decode loop to 0.58x; the figure's own A/A jitter: 0.45
CLOCK_SHARE = 0.05  # a CPU- or GPU-bound timing scales with 1 / clock: 5 % of clock is the gate's 5 % threshold
TIMING_KINDS = ("sampled", "throughput")  # the gated timings; scalars (memory, quality) are not timings
TIMING_SCALARS = ("serve_slo_fraction",)  # a scalar that is a share of requests meeting latency targets
Mode = Literal["compare", "ignore", "confirm"]


def is_timing(metric: str) -> bool:
    """Whether the gate's verdict on `metric` depends on how fast the machine ran (and so on its state)."""
    known = METRICS.get(metric)
    return known is not None and (known.kind in TIMING_KINDS or metric in TIMING_SCALARS)


def state_of(record: CaseRecord) -> MachineState | None:
    """The machine state a case recorded (latency cases), or None (perplexity, serving, older runs)."""
    return record.latency.machine if record.latency is not None else None


def _load(state: MachineState) -> str:
    return f"{state.other_cpu_load_mean:.2f} of {state.cpus} CPUs"


def _share(before: float, after: float) -> float:
    return abs(after - before) / before if before > 0 else (0.0 if after == before else float("inf"))


def _mhz(low: float | None, high: float | None) -> str:
    return f"{low:.0f} MHz" if low == high else f"{low:.0f}-{high:.0f} MHz"


def reasons(baseline: MachineState, current: MachineState) -> list[str]:
    """Each material difference between two recorded states, with both sides' figures (empty: alike)."""
    out = []
    loads = (f"other processes kept {baseline.other_cpu_load_mean:.2f} vs {current.other_cpu_load_mean:.2f} of "
             f"{current.cpus} CPUs busy (baseline vs current, mean over the rounds")
    if baseline.contended != current.contended:
        out.append(f"measured contended in the {'current' if current.contended else 'baseline'} run only: {loads})")
    elif abs(current.other_cpu_load_mean - baseline.other_cpu_load_mean) >= LOAD_CPUS:
        out.append(f"{loads}; differ by >= {LOAD_CPUS:g} CPU)")
    cpu = [(b, c) for b, c in ((baseline.cpu_mhz_min, current.cpu_mhz_min),
                               (baseline.cpu_mhz_max, current.cpu_mhz_max)) if b is not None and c is not None]
    if any(_share(b, c) >= CLOCK_SHARE for b, c in cpu):
        out.append(f"CPU clock {_mhz(baseline.cpu_mhz_min, baseline.cpu_mhz_max)} vs "
                   f"{_mhz(current.cpu_mhz_min, current.cpu_mhz_max)} (baseline vs current; differ by >= "
                   f"{CLOCK_SHARE:.0%})")
    b_gpu, c_gpu = baseline.gpu_clock_mhz_min, current.gpu_clock_mhz_min
    if b_gpu is not None and c_gpu is not None and _share(b_gpu, c_gpu) >= CLOCK_SHARE:
        out.append(f"lowest GPU SM clock {b_gpu:.0f} vs {c_gpu:.0f} MHz (baseline vs current; differ by >= "
                   f"{CLOCK_SHARE:.0%})")
    b_wait, c_wait = baseline.run_queue_wait_share, current.run_queue_wait_share
    if b_wait is not None and c_wait is not None and _share(1 - c_wait, 1 - b_wait) >= CLOCK_SHARE:
        out.append(f"the measured process waited for a CPU {b_wait:.1%} vs {c_wait:.1%} of the time it was ready "
                   f"to run (baseline vs current): a slowdown from waiting alone of {1 / (1 - b_wait):.2f}x vs "
                   f"{1 / (1 - c_wait):.2f}x, which differ by >= {CLOCK_SHARE:.0%}")
    b_others, c_others = baseline.gpu_other_processes, current.gpu_other_processes
    if b_others is not None and c_others is not None and (b_others > 0) != (c_others > 0):
        out.append(f"other processes on the GPU: {b_others} vs {c_others} (baseline vs current)")
    return out


def difference(baseline: MachineState | None, current: MachineState | None) -> MachineDifference | None:
    """The sides' material difference, or None (alike, or a side without a recorded state: nothing to compare)."""
    if baseline is None or current is None:
        return None
    found = reasons(baseline, current)
    return MachineDifference(reasons=found, baseline=baseline, current=current) if found else None


def serving_difference(baseline: ServingLevel, current: ServingLevel) -> MachineDifference | None:
    """A serving level's client CPU (CPU seconds of the client per second of the level) on both sides."""
    before, after = baseline.value("serve_client_cpu"), current.value("serve_client_cpu")
    if before is None or after is None or abs(after - before) < LOAD_CPUS:
        return None
    return MachineDifference(reasons=[(f"the client itself kept {before:.2f} vs {after:.2f} CPUs busy (baseline vs "
                                      f"current; differ by >= {LOAD_CPUS:g} CPU)")])


def remeasured_contended(baseline: MachineState | None, current: MachineState | None) -> MachineDifference | None:
    """A re-measurement (`compare --confirming`) confirms only when it was not contended: its reason, or None."""
    if current is None or not current.contended:
        return None
    found = reasons(baseline, current) if baseline is not None else []
    return MachineDifference(reasons=[(f"re-measured under contention (others kept {_load(current)} busy): a "
                                      f"contended re-measurement confirms nothing"), *found],
                             baseline=baseline, current=current)


def missing_note(baseline: MachineState | None, current: MachineState | None) -> str:
    """Where only one side recorded its state and that side was contended: a note saying so (else empty)."""
    if (baseline is None) == (current is None):
        return ""
    present, which, other = (current, "current", "baseline") if baseline is None else (baseline, "baseline", "current")
    assert present is not None
    if not present.contended:
        return ""
    return (f"the {other} run recorded no machine state; the {which} was measured contended (others kept "
            f"{_load(present)} busy): part of this change may be the machine's")


def contended_cases(records: Iterable[CaseRecord]) -> tuple[int, int]:
    """(latency cases measured contended, latency cases with a recorded machine state)."""
    states = [s for s in map(state_of, records) if s is not None]
    return sum(s.contended for s in states), len(states)


def case_difference(base: CaseRecord, cur: CaseRecord, mode: Mode) -> tuple[MachineDifference | None, str]:
    """What `compare_runs` applies to a case's timing comparisons: the difference (None: alike or not compared)
    and a note where only one side recorded a state. `mode`: compare, ignore (--ignore-machine-state) or
    confirm (`--confirming`: a contended re-measurement confirms nothing)."""
    if mode == "ignore":
        return None, ""
    before, after = state_of(base), state_of(cur)
    found = remeasured_contended(before, after) if mode == "confirm" else None
    return found or difference(before, after), missing_note(before, after)


def apply(comparison: Comparison, found: MachineDifference | None, note: str = "") -> Comparison:
    """A timing comparison whose sides differ materially becomes inconclusive (its note keeps what the interval
    alone said); memory, quality and ungated metrics are left as they are."""
    if not is_timing(comparison.metric) or comparison.status == Status.NOT_GATED:
        return comparison
    if found is not None:
        comparison.note = "; ".join(n for n in (f"by its interval alone: {comparison.status}", comparison.note) if n)
        comparison.machine, comparison.status = found, Status.INCONCLUSIVE
    elif note:
        comparison.note = "; ".join(n for n in (note, comparison.note) if n)
    return comparison
