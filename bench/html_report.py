"""Self-contained HTML report of one run, or of several runs side by side.

One file, no external CSS/JS/fonts: plots are embedded as base64 PNG (bench/plots.py), styles are
inline, so it opens offline and can be attached to an issue. Written to
reports/<run-id>/report.html for one run and reports/<first-run-id>+<k>/report.html for a first
run plus k more. Tables are driven by bench/metrics.py: every metric present in a record gets a
column whose header carries the unit and links to its definition in the glossary.
"""
from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import jinja2

from bench.metrics import METRICS
from bench.results import RunDir

MIB = 1024 * 1024
TREND_METRICS = ("tpot_ms", "ttft_ms", "decode_tok_s", "perplexity")


class MissingReportExtra(Exception):
    """matplotlib/seaborn absent: the Markdown report is still written."""


def _require_plotting() -> None:
    missing = [m for m in ("matplotlib", "seaborn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingReportExtra(f"needs {', '.join(missing)}: pip install 'bench[report]'")


def out_dir(reports_dir: Path, run_ids: list[str]) -> Path:
    name = run_ids[0] if len(run_ids) == 1 else f"{run_ids[0]}+{len(run_ids) - 1}"
    return Path(reports_dir) / name


def _cell(metric: str, value) -> str:
    from bench.report import fmt, fmt_median

    if isinstance(value, dict):
        if METRICS[metric].unit == "bytes":
            value = {k: (v / MIB if isinstance(v, (int, float)) and k != "n" else v) for k, v in value.items()}
        return fmt_median(value)
    if METRICS[metric].unit == "bytes" and isinstance(value, (int, float)):
        return fmt(value / MIB)
    return fmt(value, 6 if metric in ("perplexity", "nll_mean") else 4)


def _shown_unit(metric: str) -> str:
    return "MiB" if METRICS[metric].unit == "bytes" else METRICS[metric].unit


def tables(records: list[dict], several_runs: bool) -> list[dict]:
    """One table per model x workload (and per model for perplexity); columns = metrics present."""
    from bench.plots import _workload

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            groups[(Path(r["model"]).name, _workload(r) if r.get("task") == "latency" else "perplexity")].append(r)
    out = []
    for (model, workload), group in groups.items():
        metrics = [m for m in METRICS if any(r["metrics"].get(m) is not None for r in group)]
        rows = []
        for r in group:
            n = r["metrics"].get("repetitions")
            rows.append({"run": r["run"], "variant": r["variant"], "n": n if n is not None else "",
                         "cells": [_cell(m, r["metrics"].get(m)) if r["metrics"].get(m) is not None else "n/a"
                                   for m in metrics]})
        out.append({"title": f"{model}: {workload}", "metrics": [(m, _shown_unit(m)) for m in metrics],
                    "rows": rows, "several_runs": several_runs})
    return out


def load(results_dir: Path, run_ids: list[str]) -> tuple[list[dict], list[dict]]:
    """(runs: meta + reference, records of every run with 'run' and 'raw' added)."""
    from bench.report import load_run

    runs, records = [], []
    for run_id in run_ids:
        meta, recs, reference = load_run(results_dir, run_id)
        run = RunDir(results_dir, run_id)
        runs.append({"meta": meta, "reference": reference, "n_ok": sum(r["status"] == "ok" for r in recs),
                     "missing": [c for c in meta.get("case_ids", []) if c not in {r["id"] for r in recs}]})
        for r in recs:
            records.append({**r, "run": run_id, "raw": run.samples(r["id"]) if r["status"] == "ok" else None})
    return runs, records


def trend_plots(db: Path | None, suites: set[str]) -> list:
    from bench import history, plots
    from bench.changepoints import change_points

    if db is None or not Path(db).exists():
        return []
    out = []
    for suite in sorted(s for s in suites if s):
        for metric in TREND_METRICS:
            rows = history.trend(db, suite, metric)
            series: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                series[f"{r['variant']} · {r['workload']}"].append(r["value"])
            points = {label: change_points(values) for label, values in series.items()}
            plot = plots.trend(rows, metric, points)
            if plot:
                out.append(plot)
    return out


def render(runs: list[dict], records: list[dict], history_db: Path | None = None) -> str:
    _require_plotting()
    from bench import plots

    several = len(runs) > 1
    figures = [plots.pareto(records, several), plots.latency_distributions(records, several),
               *plots.scaling(records, several), plots.memory(records, several)]
    figures += trend_plots(history_db, {r["meta"].get("suite_name") for r in runs})
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(
        runs=runs, several=several, tables=tables(records, several), figures=[f for f in figures if f],
        problems=[r for r in records if r["status"] != "ok"], metrics=METRICS.values(),
    )


def write_html(results_dir: Path, reports_dir: Path, run_ids: list[str], history_db: Path | None = None) -> Path:
    from bench import history

    _require_plotting()
    runs, records = load(Path(results_dir), list(run_ids))
    db = history.db_path(history_db, results_dir)
    out = out_dir(reports_dir, list(run_ids)) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs, records, db))
    return out
