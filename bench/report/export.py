"""Export a run for other tools: pytest-benchmark JSON (readable by `pytest-benchmark compare`) and CSV.

pytest-benchmark: one benchmark per latency case and per-repetition metric (TTFT, TPOT, e2e), named
`<case id>[<metric>]` and grouped by metric; its stats are in seconds, computed from bench's raw
samples with pytest-benchmark's own definitions (quartiles, IQR outliers, ops = rounds / total).
CSV: one row per case and metric, with the summary fields bench recorded.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import statistics
from pathlib import Path

from bench.metrics import METRICS
from bench.records import safe_files
from bench.records.rundir import Run
from bench.records.schema import Estimate, Summary

EXPORTED_SAMPLES = ("ttft_ms", "tpot_ms", "e2e_ms")
CSV_FIELDS = ["case", "variant", "model", "task", "workload", "status", "metric", "unit", "better", "value",
              "n", "median", "ci_low", "ci_high", "p90", "p99", "mean", "std", "min", "max"]


def _quartiles(data: list[float]) -> tuple[float, float]:
    """Q1, Q3 as pytest_benchmark.stats.Stats computes them (so its tables agree with ours)."""
    d, n = sorted(data), len(data)
    if n == 1:
        return d[0], d[0]
    if n % 2:
        k, q = n // 4, n % 4
        q1 = 0.25 * d[k - 1] + 0.75 * d[k] if q == 1 else 0.75 * d[k] + 0.25 * d[k + 1]
        q3 = 0.75 * d[3 * k] + 0.25 * d[3 * k + 1] if q == 1 else 0.25 * d[3 * k + 1] + 0.75 * d[3 * k + 2]
        return q1, q3
    return statistics.median(d[: n // 2]), statistics.median(d[n // 2:])


def pb_stats(data: list[float]) -> dict:
    """pytest-benchmark's `stats` dict for samples in seconds."""
    d = sorted(data)
    mean = statistics.mean(d)
    std = statistics.stdev(d) if len(d) > 1 else 0
    q1, q3 = _quartiles(d)
    iqr = q3 - q1
    lo = next(x for x in d if x >= q1 - 1.5 * iqr)
    hi = next((x for x in reversed(d) if x <= q3 + 1.5 * iqr), d[-1])
    total = sum(d)
    return {
        "min": d[0], "max": d[-1], "mean": mean, "stddev": std, "rounds": len(d), "median": statistics.median(d),
        "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": sum(x < q1 - 1.5 * iqr or x > q3 + 1.5 * iqr for x in d),
        "stddev_outliers": sum(x < mean - std or x > mean + std for x in d),
        "outliers": f"{sum(x < mean - std or x > mean + std for x in d)};"
                    f"{sum(x < q1 - 1.5 * iqr or x > q3 + 1.5 * iqr for x in d)}",
        "ld15iqr": lo, "hd15iqr": hi, "ops": len(d) / total if total else 0, "total": total,
        "iterations": 1, "data": list(data),
    }


def to_pytest_benchmark(run: Run) -> dict:
    env = run.meta.environment
    benchmarks = []
    for r in run.records:
        raw = run.samples(r.id) if r.ok and r.task == "latency" else None
        for metric in EXPORTED_SAMPLES:
            values = raw.series(metric) if raw else []
            if not values:
                continue
            benchmarks.append({
                "group": metric, "name": f"{r.id}[{metric}]", "fullname": f"{run.meta.suite_name}::{r.id}[{metric}]",
                "params": {"metric": metric}, "param": metric,
                "extra_info": {"variant": r.variant, "model": r.model,
                               "workload": r.workload.model_dump() if r.workload else None,
                               "unit": "s (bench records ms)", "definition": METRICS[metric].definition},
                "options": {"disable_gc": False, "timer": "perf_counter_ns (bench.core.timing)",
                            "min_rounds": len(values), "max_time": None, "min_time": None,
                            "warmup": r.case.repetitions.warmup},
                "stats": pb_stats([x / 1e3 for x in values]),
            })
    return {
        "machine_info": {
            "node": env.hostname or platform.node(), "processor": env.cpu_model or "",
            "machine": platform.machine(), "python_implementation": env.implementation or "CPython",
            "python_version": env.python or "", "release": platform.release(), "system": platform.system(),
            "cpu": {"brand_raw": env.cpu_model or "", "count": env.cpu_count},
        },
        "commit_info": {"id": env.git_sha or "unversioned", "branch": env.git_branch,
                        "dirty": bool(env.git_dirty), "project": "bench", "time": run.meta.created_at},
        "benchmarks": benchmarks,
        "datetime": run.meta.created_at,
        "version": _pb_version(),
    }


def _pb_version() -> str:
    try:
        from importlib.metadata import version

        return version("pytest-benchmark")
    except Exception:  # noqa: BLE001 - not installed: the schema is the same
        return "5.2.3"


def to_csv(run: Run) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS)
    writer.writeheader()
    for r in run.records:
        base = {"case": r.id, "variant": r.variant, "model": r.model, "task": r.task,
                "workload": r.workload.short if r.workload else "", "status": r.status}
        if not r.metrics:
            writer.writerow(base)
        for name, value in r.metrics.items():
            if name not in METRICS or value is None:
                continue
            row: dict[str, object] = {**base, "metric": name, "unit": METRICS[name].unit,
                                      "better": METRICS[name].better}
            if isinstance(value, Summary):
                row.update({k: getattr(value, k) for k in CSV_FIELDS[10:]}, value=value.median)
            elif isinstance(value, Estimate):
                row.update(value=value.value, ci_low=value.ci_low, ci_high=value.ci_high)
            else:
                row["value"] = value
            writer.writerow(row)
    return out.getvalue()


FORMATS = ("pytest-benchmark", "csv")
# How each format's file begins: an existing file that begins so is an earlier export, which -o may replace
SIGNATURES = {"pytest-benchmark": rb'\A\{\s*"machine_info"\s*:', "csv": rb"\A" + ",".join(CSV_FIELDS).encode()}


def render(run: Run, fmt: str) -> tuple[str, str]:
    """(the export's text, its file suffix)."""
    if fmt == "pytest-benchmark":
        return json.dumps(to_pytest_benchmark(run), indent=1), ".json"
    if fmt == "csv":
        return to_csv(run), ".csv"
    raise ValueError(f"unknown export format '{fmt}'; valid values: {', '.join(FORMATS)}")


def export(run: Run, fmt: str) -> Path:
    """The export written at its default place, <run dir>/export-<format>.json|csv (bench's own file there; an
    output path the user gives goes through bench/records/outputs.py instead)."""
    text, suffix = render(run, fmt)
    return safe_files.write_text(run.path / f"export-{fmt}{suffix}", run.dir.root, text)
