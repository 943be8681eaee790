"""Self-contained HTML report of one run, or of several runs side by side.

One file, no external CSS/JS/fonts: plots are embedded as base64 PNG (bench/report/plots.py), styles
are inline, so it opens offline and can be attached to an issue. Written to
reports/<run-id>/report.html for one run and reports/<first-run-id>+<k>/report.html for a first run
plus k more. Its tables are the Markdown report's (bench/report/tables.py), with headers linking to
the glossary.
"""
from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import jinja2

from bench.metrics import METRICS
from bench.records import safe_files
from bench.records.rundir import Run
from bench.report import studies, tables
from bench.report.conformance import matrix as conformance_matrix
from bench.report.markdown import serving

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


def trend_plots(db: Path | None, suites: set[str]) -> list:
    from bench.gate import history
    from bench.gate.changepoints import change_points
    from bench.report import plots

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


def render(runs: list[Run], history_db: Path | None = None) -> str:
    _require_plotting()
    from bench.report import plots

    several = len(runs) > 1
    by_id = {run.run_id: run for run in runs}
    entries = [tables.Entry(run.run_id, r) for run in runs for r in run.records]

    def samples(entry: tables.Entry):
        return by_id[entry.run].samples(entry.record.id) if entry.record.ok else None

    figures = [plots.pareto(entries, several), plots.latency_distributions(entries, several, samples),
               *plots.scaling(entries, several), plots.memory(entries, several), plots.context_curves(entries, several),
               plots.perplexity_vs_window(entries, several),
               *plots.serving_curves(entries, several), plots.serving_pareto(entries, several),
               *studies.batching_plots(entries, several)]
    figures += trend_plots(history_db, {run.meta.suite_name for run in runs})
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.report", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(
        runs=runs, several=several,
        tables=[*tables.summary_tables(entries, several), *tables.result_tables(entries, several),
                *serving(entries, several), *studies.tables(entries, samples), *tables.machine_tables(entries),
                *conformance_matrix(entries)],
        what_ran=tables.what_ran(entries, several), figures=[f for f in figures if f],
        problems=[e for e in entries if not e.record.ok], metrics=METRICS.values(),
    )


def write_html(runs: list[Run], reports_dir: Path, history_db: Path | None = None) -> Path:
    _require_plotting()
    out = out_dir(reports_dir, [run.run_id for run in runs]) / "report.html"
    safe_files.write_text(out, reports_dir, render(runs, history_db))
    return out
