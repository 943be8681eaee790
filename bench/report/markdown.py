"""The Markdown report of one run (reports/<run-id>/report.md) and the short table printed after a run.

Tables come from bench/report/tables.py over the run's typed records (summaries derived from the raw
samples at run time); numbers are shown to 4 significant digits, the JSON keeps them whole. Every
variant is compared with the reference variant on the same model and workload.
"""
from __future__ import annotations

import os
from pathlib import Path

import jinja2

from bench.core import markdown as md
from bench.metrics import METRICS
from bench.presentation import table
from bench.records import safe_files
from bench.records.rundir import Run
from bench.report import studies, tables
from bench.report.conformance import matrix as conformance_matrix
from bench.report.profile_section import profiled_sections


def _template(name: str, **options) -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.report", "templates"), keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, **options)
    # what came from a suite, a run or a failure (labels, paths, reasons, output) goes through these
    env.filters.update(md=md.text, code=md.code, fence=md.fence)
    return env.get_template(name)


def render(run: Run, run_link: str = ".") -> str:
    """run_link: the run's results directory relative to the report (for links to traces)."""
    entries = [tables.Entry(run.run_id, r) for r in run.records]

    def samples(entry: tables.Entry):
        return run.samples(entry.record.id) if entry.record.ok else None
    return _template("report.md.j2").render(
        meta=run.meta, reference=run.reference,
        tables=[(t.title, table.markdown(t)) for t in [*tables.summary_tables(entries), *tables.result_tables(entries),
                                                        *serving(entries), *studies.tables(entries, samples),
                                                        *tables.machine_tables(entries),
                                                        *conformance_matrix(entries)]],
        problems=[r for r in run.records if not r.ok], missing=run.missing,
        what_ran=table.markdown(tables.what_ran(entries)), metrics=METRICS.values(),
        n_ok=sum(r.ok for r in run.records), n_total=len(run.meta.case_ids),
        profiled=profiled_sections(run.records, run_link),
    )


def serving(entries: list[tables.Entry], several_runs: bool = False) -> list[table.Table]:
    """The serving tables (one per load level) and the servers table, when the runs have serving cases."""
    if not any(e.record.serving for e in entries):
        return []
    return tables.serving_tables(entries, several_runs) + [tables.servers_table(entries, several_runs)]


def write_report(run: Run, reports_dir: Path) -> Path:
    out = Path(reports_dir) / run.run_id / "report.md"
    run_link = os.path.relpath(run.path, out.parent).replace(os.sep, "/")
    safe_files.write_text(out, reports_dir, render(run, run_link))
    return out


def terminal_table(run: Run) -> str:
    """A compact plain-text summary for the end of `bench run`."""
    headers = ["case", "status", "TTFT ms", "TPOT ms", "decode tok/s", "peak RSS MiB", "perplexity"]
    rows = []
    for r in run.records:
        latency = r.task == "latency" and r.ok
        rows.append([
            f"{r.variant} {r.workload.label if r.workload else r.task}",
            r.status + (f": {r.reason[:60]}" if r.reason else ""),
            *(tables.metric_cell(r, m).text if latency else "" for m in ("ttft_ms", "tpot_ms", "decode_tok_s")),
            tables.metric_cell(r, "peak_rss_bytes").text if "peak_rss_bytes" in r.metrics else "",
            tables.metric_cell(r, "perplexity").text if r.task == "perplexity" and r.ok else "",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([line.format(*headers), line.format(*("-" * w for w in widths))] + [line.format(*r) for r in rows])
