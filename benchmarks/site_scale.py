"""Benchmark: the dashboard over a year of nights and the run history at 10,000 runs (issue 26 item 3).

    python benchmarks/site_scale.py [--runs 365] [--cases 50] [--history-runs 10000] [--work DIR]

1. Writes `--runs` synthetic nightly runs of a `--cases`-case suite a day apart under WORK/results: real run
   directories made with the project's writers (RunDir: run.json, raw samples per latency case, one record per
   line), 4 latency cases to 1 perplexity case, 3 processes x 20 repetitions x 16 tokens per latency case, the
   records' summaries derived from the raw stamps (bench/measure/latency.py `derive`), a machine fingerprint and a
   quiet machine state on every record; one variant decodes 8 % slower from the night at 80 % of the year.
2. Times `python -m bench site` as a subprocess (the path users run): cold (an empty verdict cache), then again
   after one more night is added, then once more with nothing changed; prints each wall time and the process's
   peak RSS (`os.wait4`'s ru_maxrss of that child; this parent stays small, so the figure is the child's own).
3. Fills a history database with `--history-runs` runs (the runs' own rows, recorded with the history's own row
   builder, repeated under new run ids and dates), then times `python -m bench history record RUN` (subprocess,
   imports included) and the history's queries in process (record, trend of a metric, one case's trend, the
   between-run noise of one case).

Every figure is printed with what it measured; nothing here asserts a time (the machine may be loaded).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gate import history
from bench.measure.latency import derive
from bench.records.rundir import RunDir, load_run
from bench.records.schema import (
    CaseRecord,
    CaseSpec,
    Environment,
    LatencyInfo,
    Machine,
    MachineState,
    PerplexityInfo,
    RawSamples,
    Repetitions,
    RunMeta,
    Workload,
)

SUITE = "nightly-sim"
DAY = 86400.0
T0 = 1_767_232_800.0  # 2026-01-01 02:00 UTC: the first night
PROCESSES, REPETITIONS, NEW_TOKENS = 3, 20, 16
TEMPLATES = 6  # distinct measurements per case, reused across nights (a measurement is derived, not invented)
WORKLOADS = [Workload(batch_size=b, prompt_tokens=p, new_tokens=NEW_TOKENS) for b, p in ((1, 64), (1, 256), (4, 64),
                                                                                          (8, 128))]
SLOW_VARIANT = "v03"  # decodes 8 % slower from night int(0.8 * runs) on
MACHINE = Machine(machine_id="0123456789abcdef", hostname="nightly-runner", cpu_model="Synthetic CPU", cpu_count=16,
                  memory_bytes=64 * 2**30, gpus=[{"name": "Synthetic GPU", "memory_total_bytes": 80 * 2**30}],
                  gpu_driver="580.2", libraries={"torch": "2.13.0"})
QUIET = MachineState(cpus=16, other_cpu_load_mean=0.05, other_cpu_load_max=0.2, cpu_mhz_min=2990.0,
                     cpu_mhz_max=3010.0, contended=False)


def cases(n_cases: int) -> list[CaseSpec]:
    """`n_cases` cases: per variant, one latency case per workload and one perplexity case (4 to 1)."""
    out: list[CaseSpec] = []
    for v in range(n_cases):
        variant = f"v{v // (len(WORKLOADS) + 1):02d}"
        slot = v % (len(WORKLOADS) + 1)
        workload = WORKLOADS[slot] if slot < len(WORKLOADS) else None
        task = "latency" if workload else "perplexity"
        case_id = f"{variant}.sim-model.{workload.short if workload else 'perplexity'}." + \
            hashlib.sha256(f"{variant}/{slot}".encode()).hexdigest()[:8]
        out.append(CaseSpec(id=case_id, suite=SUITE, model="sim-model", backend="hf-eager", variant=variant, task=task,
                            workload=workload, reference="v00",
                            repetitions=Repetitions(processes=PROCESSES, min=REPETITIONS, max=REPETITIONS)))
    return out


@cache
def latency_template(case_index: int, k: int, slow: bool) -> tuple[RawSamples, dict]:
    """One measurement of a latency case: its raw samples and the metrics derived from them."""
    rng = np.random.default_rng(case_index * 1000 + k)
    work = WORKLOADS[case_index % (len(WORKLOADS) + 1)]
    per_token = 2e6 * (1 + 0.1 * (case_index % 7)) * (1.08 if slow else 1.0) * (1 + 0.004 * (k - TEMPLATES / 2))
    levels = np.repeat(np.exp(rng.normal(0, 0.01, PROCESSES)), REPETITIONS)
    gaps = rng.normal(per_token, per_token * 0.02, (PROCESSES * REPETITIONS, NEW_TOKENS)) * levels[:, None]
    gaps[:, 0] = rng.normal(5e6, 1e5, len(gaps)) * work.batch_size * work.prompt_tokens / 64 * levels
    stamps = np.cumsum(gaps, axis=1).astype(np.int64).tolist()
    samples, metrics = derive(stamps, work.batch_size, work.prompt_tokens,
                              process=[p for p in range(PROCESSES) for _ in range(REPETITIONS)])
    metrics.update(peak_rss_bytes=int(2**30 * (1 + 0.001 * k)), model_size_bytes=500_000_000)
    return samples, metrics


def record(spec: CaseSpec, case_index: int, night: int, runs: int) -> tuple[CaseRecord, object]:
    """The record of one case on one night (and its raw samples, for a latency case)."""
    k = int(hashlib.sha256(f"{night}/{case_index}".encode()).hexdigest(), 16) % TEMPLATES  # a seeded draw
    started = T0 + night * DAY + 60.0 * case_index
    if spec.task == "latency":
        samples, metrics = latency_template(case_index, k, spec.variant == SLOW_VARIANT and night >= int(0.8 * runs))
        latency = LatencyInfo(repetitions=PROCESSES * REPETITIONS, stop_reason="max_repetitions", measure_seconds=4.0,
                              processes=PROCESSES, rounds=REPETITIONS // 2, interleave="resident", machine=QUIET)
        return CaseRecord(case=spec, status="ok", started_at=started, wall_seconds=30.0, metrics=dict(metrics),
                          latency=latency, machine=MACHINE), samples
    ppl = 12.0 + 0.05 * (case_index % 5) + 0.001 * k
    metrics = {"perplexity": ppl, "delta_ppl": ppl - 12.0, "kld_mean": 0.002 * (case_index % 5) + 1e-5 * k,
               "top1_agreement": 0.99 - 0.002 * (case_index % 5), "peak_rss_bytes": int(1.5 * 2**30)}
    info = PerplexityInfo(windows=32, scored_tokens=8192, fed_tokens=8192, quality_reference="v00")
    return CaseRecord(case=spec, status="ok", started_at=started, wall_seconds=60.0, metrics=metrics,
                      perplexity=info, machine=MACHINE), None


def write_night(results: Path, night: int, specs: list[CaseSpec], runs: int) -> str:
    """Run `night` of the suite, written as `bench run` writes one (run.json, samples, then each record)."""
    run_id = f"{SUITE}-{night:04d}"
    env = Environment(python="3.11.7", platform="Linux-6.1-x86_64", cpu_model=MACHINE.cpu_model, cpu_count=16,
                      libraries={"torch": "2.13.0"}, git_sha=hashlib.sha1(f"commit {night}".encode()).hexdigest(),
                      git_branch="main", git_dirty=False, hostname=MACHINE.hostname)
    meta = RunMeta(run_id=run_id, suite_name=SUITE, created_at=T0 + night * DAY, environment=env,
                   case_ids=[s.id for s in specs], reference="v00")
    run = RunDir(results, run_id)
    run.create(meta)
    for i, spec in enumerate(specs):
        rec, samples = record(spec, i, night, runs)
        if samples is not None:
            run.write_samples(spec.id, samples)
        run.append(rec)
    return run_id


def write_nights(results: Path, first: int, count: int, n_cases: int, runs: int) -> list[str]:
    """Nights first .. first + count - 1. The writers' fsync is skipped while they write (durability of a benchmark's
    synthetic input does not matter, and thousands of fsyncs on a shared disk take minutes); the files are the same."""
    specs = cases(n_cases)
    fsync, os.fsync = os.fsync, lambda fd: None
    try:
        return [write_night(results, night, specs, runs) for night in range(first, first + count)]
    finally:
        os.fsync = fsync


# ------------------------------------------------------------------ timing the dashboard

# the command is started by this small process, so its peak RSS is its own (ru_maxrss carries a parent's over
# fork and exec, and this benchmark's process holds the generated runs' templates)
WAIT4 = """import json, os, subprocess, sys, time
began = time.monotonic()
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps([time.monotonic() - began, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                  os.waitstatus_to_exitcode(status)]), file=sys.stderr)
"""


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """Run `cmd` (a subprocess, as a user does): (wall s, CPU s user+system, peak RSS KiB, its output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run([sys.executable, "-c", WAIT4, *cmd], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.PIPE, text=True, check=False)
        out.seek(0)
        text = out.read()
    wall, cpu, rss, code = json.loads(proc.stderr.strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}:\n{text}\n{proc.stderr}")
    return wall, cpu, rss, text


def bench_site(work: Path, runs: int, n_cases: int) -> None:
    results = work / "results"
    have = sorted(p.name for p in results.glob(f"{SUITE}-*")) if results.is_dir() else []
    extra = results / f"{SUITE}-{runs:04d}"
    if extra.exists():  # the night a previous invocation added
        shutil.rmtree(extra)
        have.remove(extra.name)
    if len(have) != runs:
        shutil.rmtree(results, ignore_errors=True)
        began = time.monotonic()
        write_nights(results, 0, runs, n_cases, runs)
        print(f"wrote {runs} runs of {n_cases} cases in {time.monotonic() - began:.0f} s "
              f"({sum(f.stat().st_size for f in results.rglob('*') if f.is_file()) / 2**20:.0f} MiB)")
    else:
        print(f"reusing the {runs} runs under {results}")
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "bench", "site", "--results", str(results), "--reports", str(work / "none"),
               "-o", str(work / "site"), "--cache", str(cache)]
    figures = []
    for what in ("cold (empty cache)", "one more night added", "nothing changed"):
        if what == "one more night added":
            write_nights(results, runs, 1, n_cases, runs)
        wall, cpu, rss, out = timed(command, work)
        figures.append((what, wall, cpu, rss))
        print(f"bench site, {what}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss / 1024:.0f} MiB\n  {out.strip()}")
    print(f"\n| bench site over {runs} runs x {n_cases} cases | wall s | CPU s (user+sys) | peak RSS MiB |")
    print("|---|---|---|---|")
    for what, wall, cpu, rss in figures:
        print(f"| {what} | {wall:.1f} | {cpu:.1f} | {rss / 1024:.0f} |")


# ------------------------------------------------------------------ the history at 10,000 runs

def fill_history(db: Path, results: Path, n_runs: int) -> list[str]:
    """A history of `n_runs` runs: the rows of the runs under `results` (history.rows_of), repeated under new run ids
    a day apart; indexes made after the rows, as connect() makes them on an older database's first open."""
    templates = [history.rows_of(load_run(p)) for p in sorted(results.glob(f"{SUITE}-*"))[:30]]
    conn = sqlite3.connect(db)
    conn.executescript(history.SCHEMA)
    conn.execute("ALTER TABLE runs ADD COLUMN machine TEXT")
    conn.execute("ALTER TABLE metrics ADD COLUMN machine TEXT")
    ids = []
    with conn:
        for i in range(n_runs):
            row, metrics = templates[i % len(templates)]
            run_id = f"h{i:05d}"
            row = {**row, "run_id": run_id, "created_at": T0 - (n_runs - i) * DAY / 4, "git_commit": f"{i:040x}"}
            history.store(conn, row, [(run_id, *m[1:]) for m in metrics])
            ids.append(run_id)
    conn.close()
    history.connect(db).close()  # the indexes
    return ids


def best(fn, repeat: int = 3) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times), times


def bench_history(work: Path, n_runs: int) -> None:
    results = work / "results"
    db = work / f"history-{n_runs}.sqlite"
    if not db.exists():
        began = time.monotonic()
        tmp = db.with_suffix(".filling")
        tmp.unlink(missing_ok=True)
        fill_history(tmp, results, n_runs)
        tmp.rename(db)
        print(f"filled a history of {n_runs} runs in {time.monotonic() - began:.0f} s "
              f"({db.stat().st_size / 2**30:.2f} GiB)")
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    conn.close()
    print(f"history {db}: {runs} runs, {rows} metric rows")
    newest = max(results.glob(f"{SUITE}-*"))
    run = load_run(newest)
    case = run.records[0]
    lines = []
    for what, fn in [
        ("history.record_run (in process, the run already loaded)", lambda: history.record_run(run, db)),
        ("history.trend: one case's TPOT over every run", lambda: history.trend(db, SUITE, "tpot_ms", case.id)),
        ("history.trend: every case's TPOT over the newest 365 runs",
         lambda: history.trend(db, SUITE, "tpot_ms", newest=365)),
        ("history.trend: every case's TPOT over every run", lambda: history.trend(db, SUITE, "tpot_ms")),
        ("history.between_run_sigma (the gate's noise question)",
         lambda: history.between_run_sigma(db, SUITE, run.machine_of(case), case.id, "tpot_ms", 2e9)),
        ("history.last_run_path (compare last:main)", lambda: history.last_run_path("main", db)),
    ]:
        fastest, times = best(fn)
        lines.append((what, fastest, times))
    walls = [timed([sys.executable, "-m", "bench", "history", "record", str(newest), "--db", str(db)], work)[0]
             for _ in range(3)]
    lines.append(("python -m bench history record RUN (subprocess: start, imports, load, record)", min(walls), walls))
    print(f"\n| query on a history of {runs} runs ({rows} rows) | best of 3, s | all, s |")
    print("|---|---|---|")
    for what, fastest, times in lines:
        print(f"| {what} | {fastest:.3f} | {', '.join(f'{t:.3f}' for t in times)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=365)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--history-runs", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-site-scale",
                        help="where the runs, the cache and the history go (kept: a second invocation reuses them)")
    parser.add_argument("--skip-site", action="store_true")
    parser.add_argument("--skip-history", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(1, 5, 15 min); peak RSS of this process so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if not args.skip_site:
        bench_site(args.work, args.runs, args.cases)
    if not args.skip_history:
        bench_history(args.work, args.history_runs)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
