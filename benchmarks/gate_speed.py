"""Benchmark: how long `python -m bench compare` takes on two big runs (issue 26: <= 5 s for 200 cases).

    python benchmarks/gate_speed.py [--cases 200] [--processes 3] [--repetitions 20] [--rounds 5]
                                    [--old-tree DIR] [--out DIR]

Builds two synthetic runs, BASELINE and CURRENT, as real run directories written with bench's record types
(bench/records: RunDir, CaseRecord, RawSamples; metrics derived from per-token stamps by
bench/measure/latency.py `derive`), so `bench compare` loads them as it loads any run: `--cases` latency cases
(batch 1, 64 prompt tokens, 32 new tokens), each measured in `--processes` processes of `--repetitions`
repetitions. Every token gap is log-normal noise (sd 3 %) around its process's level, every process's level
log-normal noise (sd 1 %) around the case's; CURRENT is drawn like BASELINE (A/A), with every tenth case 10 %
slower, so the gate has regressions, unchanged and inconclusive verdicts to find. The summaries' intervals in
the records are order-statistics ones (`derive` without the processes, for speed): the gate reads the raw
samples and the medians.

Then it times `python -m bench compare BASELINE CURRENT --json FILE` as a subprocess, the path a user runs
(interpreter start, imports, loading, every comparison, the Markdown), `--rounds` times, and prints the median
and range of its wall time and of its CPU time (user + system: what a loaded machine stretches into the wall
time), with the machine's load average. `--old-tree DIR`: the same command run by another checkout (e.g. the
commit before the vectorised bootstrap: `git archive 64c6843 | tar -x -C DIR`), once, for the speedup and its
verdicts.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.errors import ExitCode
from bench.gate.result import Comparison, GateResult, read_result
from bench.measure.latency import derive
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, LatencyInfo, MachineState, RunMeta, Workload

PROMPT, NEW_TOKENS = 64, 32


def case_stamps(rng: np.random.Generator, level_ms: float, process_sizes: list[int], new_tokens: int,
                between: float, within: float) -> list[list[int]]:
    """Per repetition, ns from submit to each of `new_tokens` tokens: a first token 3 gaps long, then the gaps; each
    process's level log-normal (sd `between`) around `level_ms`, each gap log-normal (sd `within`) around that."""
    stamps = []
    for size in process_sizes:
        process_level = level_ms * np.exp(rng.normal(0, between))
        for _ in range(size):
            gaps = process_level * np.exp(rng.normal(0, within, new_tokens))
            gaps[0] *= 3
            stamps.append([int(t * 1e6) for t in np.cumsum(gaps)])
    return stamps


def write_run(root: Path, run_id: str, factors: list[float], process_sizes: list[int], seed: int,
              new_tokens: int = NEW_TOKENS, between: float = 0.01, within: float = 0.03) -> Path:
    """A run directory of one latency case per factor (its time per token scaled by the factor), each measured in
    len(process_sizes) processes of those many repetitions."""
    rng = np.random.default_rng(seed)
    ids = [f"synthetic.tiny-llama-v{i:03d}.b1-p{PROMPT}-n{new_tokens}" for i in range(len(factors))]
    run = RunDir(root, run_id)
    run.create(RunMeta(run_id=run_id, suite_name="gate-speed", created_at=time.time(), case_ids=ids))
    quiet = MachineState(cpus=2, other_cpu_load_mean=0.05, other_cpu_load_max=0.1, contended=False)
    groups = [p for p, size in enumerate(process_sizes) for _ in range(size)]
    for i, (case_id, factor) in enumerate(zip(ids, factors, strict=True)):
        stamps = case_stamps(rng, (1.0 + 0.01 * i) * factor, process_sizes, new_tokens, between, within)
        samples, metrics = derive(stamps, 1, PROMPT)
        spec = CaseSpec(id=case_id, suite="gate-speed", model="tiny-llama", backend="synthetic", variant=f"v{i:03d}",
                        task="latency", workload=Workload(batch_size=1, prompt_tokens=PROMPT, new_tokens=new_tokens))
        run.write_samples(case_id, samples.model_copy(update={"process": groups}))
        run.append(CaseRecord(
            status="ok", case=spec, metrics=metrics, started_at=time.time(), wall_seconds=1.0,
            latency=LatencyInfo(repetitions=len(groups), stop_reason="max_repetitions", measure_seconds=1.0,
                                processes=len(process_sizes), rounds=max(process_sizes), interleave="resident",
                                machine=quiet)))
    return run.path


def time_compare(tree: Path, baseline: Path, current: Path, out: Path) -> tuple[float, float, GateResult]:
    """(wall seconds, CPU seconds: user + system) of one `python -m bench compare` run by `tree`, and its --json
    (read by this tree's bench: `read_result` reads what older trees wrote)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench", "compare", str(baseline), str(current), "--json", str(out)],
                          cwd=tree, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_after.ru_utime - cpu_before.ru_utime + cpu_after.ru_stime - cpu_before.ru_stime
    if proc.returncode not in (ExitCode.OK, ExitCode.REGRESSION, ExitCode.INCONCLUSIVE):
        raise SystemExit(f"bench compare exited {proc.returncode}:\n{proc.stderr}")
    return seconds, cpu, read_result(out, "--json")


def boundary_distance(comparison: Comparison) -> float:
    """How far the nearest end of a comparison's interval lies from a verdict boundary (change 0 or +-threshold)."""
    threshold = comparison.threshold
    return min(abs(end - 1 - boundary) for end in (comparison.ci_low, comparison.ci_high) if end is not None
               for boundary in (-threshold, 0.0, threshold))


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old-tree", type=Path, help="a checkout to time once on the same runs, for the speedup")
    parser.add_argument("--out", type=Path, help="where the runs are written (default: a temporary directory)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gate-speed-"))
    started = time.perf_counter()
    sizes = [args.repetitions] * args.processes
    baseline = write_run(out, "baseline", [1.0] * args.cases, sizes, seed=1)
    current = write_run(out, "current", [1.10 if i % 10 == 0 else 1.0 for i in range(args.cases)], sizes, seed=2)
    print(f"two runs of {args.cases} latency cases x {args.processes} processes x {args.repetitions} repetitions "
          f"({NEW_TOKENS} new tokens) written to {out} in {time.perf_counter() - started:.1f} s")
    print(f"before: {load()}")
    seconds, cpu = [], []
    for i in range(args.rounds):
        took, used, result = time_compare(ROOT, baseline, current, out / "compare.json")
        seconds.append(took)
        cpu.append(used)
        print(f"  round {i + 1}: {took:.2f} s wall, {used:.2f} s CPU ({load()})", flush=True)
    verdicts = Counter(c.status for c in result.comparisons)
    print(f"bench compare (this tree): median {statistics.median(seconds):.2f} s wall, range {min(seconds):.2f}-"
          f"{max(seconds):.2f} s; CPU median {statistics.median(cpu):.2f} s, range {min(cpu):.2f}-{max(cpu):.2f} s; "
          f"{args.rounds} rounds; {len(result.comparisons)} comparisons, exit {result.exit_code:d}, verdicts "
          f"{ {str(status): n for status, n in verdicts.items()} }")
    if args.old_tree:
        took, used, old = time_compare(args.old_tree.resolve(), baseline, current, out / "compare-old.json")
        now = {(c.case, c.metric): c for c in result.comparisons}
        differ = [(c, now[(c.case, c.metric)]) for c in old.comparisons if now[(c.case, c.metric)].status != c.status]
        print(f"bench compare ({args.old_tree}): {took:.2f} s wall, {used:.2f} s CPU, one round ({load()}): "
              f"{used / statistics.median(cpu):.0f}x this tree's median CPU; the same verdict in "
              f"{len(old.comparisons) - len(differ)} of {len(old.comparisons)} comparisons")
        if differ:
            margin = max(max(boundary_distance(c), boundary_distance(d)) for c, d in differ)
            print(f"  the {len(differ)} others: in each, both trees' intervals have an end within {100 * margin:.2f} "
                  f"percentage points of a verdict boundary (0 or +-threshold): Monte-Carlo error; "
                  + ", ".join(f"{c.status} -> {d.status}" for c, d in differ))
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
