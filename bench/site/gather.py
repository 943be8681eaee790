"""What the dashboard shows, gathered once: the runs under --results (read with the one loader,
bench/records `load_run`) and the per-run values of every case (bench/gate/history.py).

The history database given with --history is copied to a scratch file and every loaded run is recorded
into the copy with the history's own `record_run`, so runs that were never recorded and runs whose
directories are long gone (only their medians are in the history) make one series per case. The
database given is never written.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.gate import history
from bench.metrics import METRICS
from bench.records.rundir import Run, RunError, load_run

# the metrics a case's trend page plots (when the case has them), in this order
TREND_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes",
                 "perplexity", "delta_ppl", "kld_mean", "top1_agreement",
                 "energy_prefill_j_per_token", "energy_decode_j_per_token")


@dataclass
class Point:
    """One run's value of one metric of one case (the history's row)."""

    run_id: str
    created_at: float
    commit: str
    branch: str
    value: float
    ci_low: float | None
    ci_high: float | None


@dataclass
class Series:
    """A case's metric over runs, on one machine, oldest run first."""

    suite: str
    machine: str
    case_id: str
    variant: str
    model: str
    task: str
    workload: str
    metric: str
    points: list[Point] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.suite, self.case_id)


@dataclass
class SiteData:
    runs: dict[str, Run]  # loaded from --results, by run id
    run_rows: dict[str, dict]  # every run the history knows (loaded or not), by run id
    series: list[Series]
    db: Path  # the scratch history (loaded runs recorded): what the gate reads between-run noise from
    reports: dict[str, Path]  # run id -> its HTML report (bench report), where one exists
    workdir: tempfile.TemporaryDirectory

    def ordered_runs(self, suite: str | None = None) -> list[Run]:
        """Loaded runs, oldest first (by creation time), of one suite or all."""
        runs = [r for r in self.runs.values() if suite is None or r.meta.suite_name == suite]
        return sorted(runs, key=lambda r: (r.meta.created_at, r.run_id))

    def record_of(self, suite: str, case_id: str):
        """The newest loaded record of a case (for its backend, machine label, settings), or None."""
        for run in reversed(self.ordered_runs(suite)):
            for record in run.records:
                if record.id == case_id:
                    return record
        return None


def find_runs(results: Path) -> list[Run]:
    """Every run directory directly under `results` (a directory with run.json); unreadable ones are skipped
    with a warning, not fatal: one bad run must not take the dashboard down."""
    runs = []
    for path in sorted(Path(results).glob("*/run.json")):
        try:
            runs.append(load_run(path.parent))
        except RunError as exc:
            print(f"warning: {path.parent}: not shown: {exc}", file=sys.stderr)
    return runs


def gather(results: Path | None, history_db: Path | None, reports: Path | None) -> SiteData:
    workdir = tempfile.TemporaryDirectory(prefix="bench-site-")
    db = Path(workdir.name) / "history.sqlite"
    if history_db is not None:
        if not Path(history_db).exists():
            raise history.HistoryError(f"no history database at {history_db}")
        shutil.copyfile(history_db, db)
    runs = find_runs(results) if results is not None and Path(results).is_dir() else []
    for run in runs:
        history.record_run(run, db)
    if not db.exists():
        history.connect(db, create=True).close()
    run_rows = {row["run_id"]: row for row in history.list_runs(db)}
    series: dict[tuple, Series] = {}
    for suite in sorted({row["suite"] for row in run_rows.values()}):
        for metric in TREND_METRICS:
            if metric not in METRICS:
                continue
            for row in history.trend(db, suite, metric):
                key = (suite, row["machine"] or "?", row["case_id"], metric)
                if key not in series:
                    series[key] = Series(suite, row["machine"] or "?", row["case_id"], row["variant"], row["model"],
                                         row["task"], row["workload"], metric)
                series[key].points.append(Point(row["run_id"], row["created_at"], row["git_commit"] or "",
                                                row["branch"] or "", row["value"], row["ci_low"], row["ci_high"]))
    found_reports = {}
    if reports is not None:
        for run_id in run_rows:
            path = Path(reports) / run_id / "report.html"
            if path.is_file():
                found_reports[run_id] = path
    return SiteData({r.run_id: r for r in runs}, run_rows, list(series.values()), db, found_reports, workdir)
