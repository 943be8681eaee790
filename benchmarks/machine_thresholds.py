"""Benchmark: how much a timing moves with other processes' load, the figures behind the gate's machine thresholds.

    python benchmarks/machine_thresholds.py [--rounds 6] [--repetitions 20] [--new-tokens 32] [--out FILE]

The measured timing is benchmarks/raw_decode_loop.py (tiny-llama, one thread, greedy KV-cache decode; decode
tok/s), each measurement a fresh process. Around each, bench's own probe (bench/measure/machine.py `Probe`)
records the CPUs other processes kept busy and the CPU clock, as a case's record does; the kernel's
/proc/PID/schedstat adds how long the loop's thread waited, runnable, for a CPU (a share of its wall time: a
signal the probe does not record). Per round, in a new random order, one measurement per condition:

- quiet: no extra load (whatever else the machine runs: the probe says how much);
- half a hog, 1 hog, 2 hogs: busy-looping processes (half a hog: busy 5 ms of every 10 ms, about 0.5 CPU),
  placed by the scheduler;
- with 2+ CPUs, the decode loop pinned to CPU 0 and one hog pinned to CPU 0 (same CPU) or to CPU 1 (other CPU).

It prints, as JSON: per condition the median decode tok/s, its ratio to quiet in the same round (median over
rounds) and the probe's load; the A/A spread between quiet processes (timing and load); the slowdown per CPU
of load added and the load difference that moves the timing by the gate's default threshold (5 %); and what
the probe saw of the CPU clock. bench/gate/machine.py takes its thresholds from these figures
(docs/comparing-and-ci.md, "Machine-aware verdicts"). The slowdown per CPU pairs each loaded process with the
quiet one of its round: log(quiet / loaded tok/s) per CPU of load the probe saw added.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from typing_extensions import Self

from bench.measure.machine import Probe, available_cpus
from bench.models import build_builtin

ROOT = Path(__file__).resolve().parent.parent

GATE_THRESHOLD = 0.05  # the gate's default relative threshold (bench/gate/rule.py, suites' regression.threshold)
HOG = """
import sys, time
busy = float(sys.argv[1]) * 0.01  # of every 10 ms
while True:
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        pass
    if busy < 0.01:
        time.sleep(0.01 - busy)
"""


def _pin(proc: subprocess.Popen, cpu: int | None) -> subprocess.Popen:
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    return proc


class Hogs:
    """`n` busy-looping processes, each busy `duty` of the time (in 10 ms periods) and pinned to `cpu` (None: placed
    by the scheduler), until the block ends."""

    def __init__(self, n: int, cpu: int | None = None, duty: float = 1.0) -> None:
        self.n, self.cpu, self.duty = n, cpu, duty

    def __enter__(self) -> Self:
        self.procs = [_pin(subprocess.Popen([sys.executable, "-c", HOG, str(self.duty)]), self.cpu)
                      for _ in range(self.n)]
        time.sleep(0.3 if self.n else 0)  # running before the measured process starts
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


# name: (hogs, hogs' CPU, decode loop's CPU, hogs' duty cycle)
CONDITIONS: dict[str, tuple[int, int | None, int | None, float]] = {
    "quiet": (0, None, None, 1.0),
    "half a hog": (1, None, None, 0.5),
    "1 hog": (1, None, None, 1.0),
    "2 hogs": (2, None, None, 1.0),
    "pinned, hog on the same CPU": (1, 0, 0, 1.0),
    "pinned, hog on the other CPU": (1, 1, 0, 1.0),
}


def measure(model: str, condition: str, args) -> dict:
    """One fresh decode-loop process under `condition`: its decode tok/s and what the probe saw around it."""
    hogs, hog_cpu, own_cpu, duty = CONDITIONS[condition]
    command = [sys.executable, str(ROOT / "benchmarks" / "raw_decode_loop.py"), model, str(args.prompt_tokens),
               str(args.new_tokens), "2", str(args.repetitions)]
    with Hogs(hogs, hog_cpu, duty):
        started = time.monotonic()
        proc = _pin(subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}), own_cpu)
        probe = Probe(proc.pid).start()
        waited = None
        while proc.poll() is None:  # the kernel's run-queue wait of its main thread, until it exits
            waited = _schedstat(proc.pid) or waited
            time.sleep(0.05)
        wall = time.monotonic() - started
        out, _ = proc.communicate()
        reading = probe.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}")
    return {"condition": condition, "decode_tok_s": json.loads(out)["decode_tok_s"],
            "other_cpus": reading.other_cpus, "cpu_mhz": reading.cpu_mhz,
            "run_queue_wait_share": waited[1] / 1e9 / wall if waited else None}


def _schedstat(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of a process's main thread (/proc/PID/schedstat), or None."""
    try:
        on_cpu, waiting, _ = map(int, Path(f"/proc/{pid}/schedstat").read_text().split())
    except (OSError, ValueError):
        return None
    return on_cpu, waiting


def _slowdown_per_cpu(loaded: list[dict], quiet: list[dict]) -> list[float]:
    """Per round (paired with that round's quiet process, so slow drifts of the machine cancel): the relative
    slowdown per CPU of load added, log(quiet tok/s / loaded tok/s) / (loaded's other load - quiet's)."""
    return [math.log(q["decode_tok_s"] / p["decode_tok_s"]) / (p["other_cpus"] - q["other_cpus"])
            for p, q in zip(loaded, quiet, strict=True) if p["other_cpus"] - q["other_cpus"] > 0.1]


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(rows: list[dict]) -> dict:
    by = {c: [r for r in rows if r["condition"] == c] for c in CONDITIONS}
    quiet = by["quiet"]
    out: dict = {"conditions": {}}
    for condition, points in by.items():
        if not points:
            continue
        ratios = [p["decode_tok_s"] / q["decode_tok_s"] for p, q in zip(points, quiet, strict=True)]  # same round
        out["conditions"][condition] = {
            "decode_tok_s_median": statistics.median(p["decode_tok_s"] for p in points),
            "vs_quiet_same_round_median": statistics.median(ratios),
            "other_cpus_median": statistics.median(p["other_cpus"] for p in points),
            "other_cpus_range": [min(p["other_cpus"] for p in points), max(p["other_cpus"] for p in points)],
            "run_queue_wait_share_median": _median([p.get("run_queue_wait_share") for p in points])}
    pairs = list(itertools.combinations(quiet, 2))
    timing_moves = sorted(abs(math.log(a["decode_tok_s"] / b["decode_tok_s"])) for a, b in pairs)
    load_moves = sorted(abs(a["other_cpus"] - b["other_cpus"]) for a, b in pairs)
    out["a_a_between_quiet_processes"] = {
        "processes": len(quiet), "pairs": len(pairs),
        "timing_sd_of_log": statistics.stdev(math.log(q["decode_tok_s"]) for q in quiet) if len(quiet) > 1 else None,
        "timing_change_median": math.expm1(statistics.median(timing_moves)) if pairs else None,
        "timing_change_max": math.expm1(max(timing_moves)) if pairs else None,
        "other_cpus_change_median": statistics.median(load_moves) if pairs else None,
        "other_cpus_change_max": max(load_moves) if pairs else None}
    per_cpu = [x for c in ("half a hog", "1 hog", "2 hogs") for x in _slowdown_per_cpu(by[c], quiet)]
    slope = statistics.median(per_cpu) if per_cpu else None
    out["slowdown_per_cpu_of_added_load"] = {
        "pairs": len(per_cpu), "median": math.expm1(slope) if slope is not None else None,
        "range": [math.expm1(min(per_cpu)), math.expm1(max(per_cpu))] if per_cpu else None,
        "added_load_moving_timing_by_gate_threshold_cpus": math.log1p(GATE_THRESHOLD) / slope
        if slope and slope > 0 else None,
        "gate_threshold": GATE_THRESHOLD}
    log_time = [-math.log(r["decode_tok_s"]) for r in rows]
    out["correlation_with_log_time_per_token"] = {  # over every measurement: which figure tracks the slowdown
        name: statistics.correlation([r[name] for r in rows], log_time)
        if len(rows) > 2 and all(r.get(name) is not None for r in rows) else None
        for name in ("other_cpus", "run_queue_wait_share")}
    mhz = [r["cpu_mhz"] for r in rows if r["cpu_mhz"] is not None]
    out["cpu_mhz"] = {"min": min(mhz), "max": max(mhz), "readings": len(mhz)} if mhz else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repetitions", type=int, default=20, help="timed generations per process")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, help="also write every measurement and the summary here (JSON)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = str(build_builtin("tiny-llama"))
    conditions = [c for c, (_, hog_cpu, own, _) in CONDITIONS.items()
                  if available_cpus() >= 2 or (hog_cpu is None and own is None)]
    rng = random.Random(args.seed)
    rows = []
    started = time.monotonic()
    for round_index in range(args.rounds):
        order = conditions[:]
        rng.shuffle(order)
        by_condition = {c: measure(model, c, args) for c in order}
        rows += [{**by_condition[c], "round": round_index} for c in conditions]  # in CONDITIONS order per round
        print(f"  round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{c} {by_condition[c]['decode_tok_s']:.0f} tok/s ({by_condition[c]['other_cpus']:.2f} CPUs busy)"
            for c in conditions), file=sys.stderr)
    result = {"machine": {"cpus": available_cpus(), "cpu_count": os.cpu_count(),
                          "load_average_at_end": os.getloadavg()},
              "command": " ".join(sys.argv), "seconds": time.monotonic() - started,
              **summarize(rows)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({**result, "measurements": rows}, indent=1))


if __name__ == "__main__":
    main()
