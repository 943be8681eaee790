"""Run history: a local SQLite database of finished runs and their per-case medians.

`bench history record RUN_ID` stores the run (branch and commit from its environment fingerprint,
or given), its path, and every metric's median (or scalar) per case. `compare last:BRANCH CURRENT`
takes the last run recorded on BRANCH as its baseline, and reports plot a metric's trend.
Default database: $BENCH_HISTORY_DB, else <results-dir>/history.sqlite.
"""
from __future__ import annotations

import bisect
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.errors import BadInput
from bench.metrics import METRICS
from bench.records.rundir import Run
from bench.records.schema import CaseRecord, Estimate, Summary, shown_value

ENV = "BENCH_HISTORY_DB"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, suite TEXT, branch TEXT, git_commit TEXT, dirty INTEGER,
    created_at REAL, recorded_at REAL, path TEXT, n_cases INTEGER, n_failed INTEGER);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT, case_id TEXT, variant TEXT, model TEXT, task TEXT, workload TEXT, metric TEXT,
    value REAL, ci_low REAL, ci_high REAL, n INTEGER,
    PRIMARY KEY (run_id, case_id, metric));
"""


class HistoryError(BadInput):
    """Bad input for the history (no database, nothing recorded on a branch): exit code 2."""


def db_path(explicit: Path | None = None, results_dir: Path = Path("results")) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ[ENV]) if os.environ.get(ENV) else Path(results_dir) / "history.sqlite"


# The hot paths, each an index lookup instead of a scan of every recorded row (10,000 runs: docs/dashboard.md):
# runs of a suite or branch by date (trend, list, last:BRANCH), a run's rows (record, trend's join), a case's
# metric on a machine (the gate's between-run noise).
INDEXES = """
CREATE INDEX IF NOT EXISTS runs_by_suite ON runs (suite, created_at);
CREATE INDEX IF NOT EXISTS runs_by_branch ON runs (branch, created_at);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, metric);
CREATE INDEX IF NOT EXISTS metrics_by_series ON metrics (case_id, metric, machine);
"""


def connect(path: Path, create: bool = False) -> sqlite3.Connection:
    if Path(path).is_symlink():  # sqlite would write through it: the database is a file bench writes under results/
        raise HistoryError(f"{path} is a symbolic link (-> {os.readlink(path)}): give the database's real path "
                           f"(--db or ${ENV})")
    if not create and not Path(path).exists():
        raise HistoryError(f"no history database at {path} (record a run first: python -m bench history record RUN_ID)")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "machine" not in columns:  # a database made before runs were tagged with their machine
            conn.execute("ALTER TABLE runs ADD COLUMN machine TEXT")
        if "machine" not in {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}:  # ... and each case
            conn.execute("ALTER TABLE metrics ADD COLUMN machine TEXT")
        conn.executescript(INDEXES)  # once per database (IF NOT EXISTS): an older one gets them on first open
    except (OSError, sqlite3.Error) as exc:
        raise HistoryError(f"cannot open the history database {path}: {exc}") from None
    return conn


def rows_of(run: Run, branch: str | None = None, commit: str | None = None) -> tuple[dict, list[tuple]]:
    """What recording `run` stores: its row in `runs` and one row of `metrics` (METRIC_COLUMNS) per case and metric."""
    env = run.meta.environment
    branch = branch or env.git_branch or os.environ.get("GITHUB_REF_NAME") or "unknown"
    commit = commit or env.git_sha or "unknown"
    row = {"run_id": run.run_id, "suite": run.meta.suite_name, "machine": run.machine_of(), "branch": branch,
           "git_commit": commit,
           "dirty": int(bool(env.git_dirty)), "created_at": run.meta.created_at, "recorded_at": time.time(),
           "path": str(run.path.resolve()), "n_cases": len(run.records),
           "n_failed": sum(r.status == "failed" for r in run.records)}
    metrics = []
    for r in run.records:
        if not r.ok:
            continue
        case = (run.run_id, r.id, r.variant, r.model, r.task, r.workload.short if r.workload else r.task)
        machine = run.machine_of(r)
        for name, value in r.metrics.items():  # a record's metrics (fewer than the registry's)
            if name not in METRICS:
                continue
            shown = shown_value(value)
            if shown is None:
                continue
            if isinstance(value, Summary):
                low, high, n = value.ci_low, value.ci_high, value.n
            elif isinstance(value, Estimate):
                low, high, n = value.ci_low, value.ci_high, 1
            else:
                low, high, n = None, None, 1
            metrics.append((*case, name, shown, low, high, n, machine))
    return row, metrics


METRIC_COLUMNS = "run_id, case_id, variant, model, task, workload, metric, value, ci_low, ci_high, n, machine"
RUN_COLUMNS = ("run_id", "suite", "machine", "branch", "git_commit", "dirty", "created_at", "recorded_at", "path",
               "n_cases", "n_failed")


def store(conn: sqlite3.Connection, row: dict, metrics: list[tuple]) -> None:
    """Insert (or replace) one run's rows (rows_of) through an open connection; the caller commits."""
    conn.execute("DELETE FROM metrics WHERE run_id = ?", (row["run_id"],))
    conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                 tuple(row[c] for c in RUN_COLUMNS))
    conn.executemany(f"INSERT INTO metrics ({METRIC_COLUMNS}) VALUES ({', '.join('?' * 12)})", metrics)


def record_run(run: Run, db: Path, branch: str | None = None, commit: str | None = None) -> dict:
    """Insert (or replace) a finished run; returns what was stored. A run still being written (its lock held) is
    refused: its medians would be a partial run's, stored as the branch's history."""
    return record_runs([run], db, branch, commit)[0]


def record_runs(runs: list[Run], db: Path, branch: str | None = None, commit: str | None = None) -> list[dict]:
    """record_run for several runs in one transaction (the dashboard records every run it loads)."""
    for run in runs:
        holder = run.dir.writer_now()
        if holder:
            raise HistoryError(f"run '{run.run_id}' is still being written ({holder}): record it once it has finished")
    stored = []
    conn = connect(db, create=True)
    try:
        with conn:
            for run in runs:
                row, metrics = rows_of(run, branch, commit)
                store(conn, row, metrics)
                stored.append(row)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot write the history database {db}: {exc}") from None
    finally:
        conn.close()
    return stored


HISTORY_RUNS = 20  # the newest runs of a case whose spread estimates its between-run noise
MIN_HISTORY_RUNS = 3


def between_run_sigma(db: Path, suite: str, machine: str, case_id: str, metric: str,
                      before: float) -> tuple[float, int] | None:
    """(standard deviation of the log of the case's per-run medians, runs) over the newest runs of this suite on
    this machine recorded before `before`; None with fewer than MIN_HISTORY_RUNS."""
    reader = NoiseReader(db)
    try:
        return reader.sigma(suite, machine, case_id, metric, before)
    finally:
        reader.close()


def log_spread(newest_first: list[float]) -> tuple[float, int] | None:
    """(sample standard deviation of the logs, how many) of a case's positive per-run values, newest first; None
    with fewer than MIN_HISTORY_RUNS. The one formula of the between-run noise, wherever the rows come from."""
    if len(newest_first) < MIN_HISTORY_RUNS:
        return None
    logs = [math.log(v) for v in newest_first]
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)), len(logs)


class NoiseReader:
    """The between-run noise questions of one comparison (or dashboard), over one connection opened at the first."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._conn: sqlite3.Connection | None = None

    def sigma(self, suite: str, machine: str, case_id: str, metric: str, before: float) -> tuple[float, int] | None:
        """between_run_sigma's answer."""
        if self._conn is None:
            self._conn = connect(self.db)
        rows = self._conn.execute(
            "SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.suite = ? AND m.machine = ? AND "
            "m.case_id = ? AND m.metric = ? AND r.created_at < ? AND m.value > 0 ORDER BY r.created_at DESC LIMIT ?",
            (suite, machine, case_id, metric, before, HISTORY_RUNS)).fetchall()
        return log_spread([v for (v,) in rows])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def noise_lookup(db: Path, current: Run) -> Callable[[CaseRecord, str], tuple[float, int] | None]:
    """What the gate asks the history: a case's between-run noise, on the current run's machine."""
    reader = NoiseReader(db)

    def lookup(record: CaseRecord, metric: str) -> tuple[float, int] | None:
        return reader.sigma(current.meta.suite_name, current.machine_of(record), record.id, metric,
                            current.meta.created_at)
    return lookup


def last_run_path(branch: str, db: Path | None = None) -> Path:
    """Directory of the most recent run (by creation time) recorded on `branch`."""
    conn = connect(db_path(db))
    row = conn.execute("SELECT path FROM runs WHERE branch = ? AND n_failed = 0 ORDER BY created_at DESC LIMIT 1",
                       (branch,)).fetchone()
    conn.close()
    if row is None:
        raise HistoryError(f"no run without failures recorded on branch '{branch}' in {db_path(db)}")
    return Path(row[0])


def list_runs(db: Path, suite: str | None = None) -> list[dict]:
    conn = connect(db)
    conn.row_factory = sqlite3.Row
    query = "SELECT * FROM runs" + (" WHERE suite = ?" if suite else "") + " ORDER BY created_at"
    rows = [dict(r) for r in conn.execute(query, (suite,) if suite else ())]
    conn.close()
    return rows


def trend(db: Path, suite: str, metric: str, case_id: str | None = None, newest: int | None = None) -> list[dict]:
    """Per-run values of `metric` for every case of `suite` (or one case), oldest run first; `newest`: of the
    suite's newest runs only."""
    where = "r.suite = ? AND m.metric = ?"
    args: list[object] = [suite, metric]
    if case_id:
        where, args = where + " AND m.case_id = ?", [*args, case_id]
    if newest is not None:
        where += " AND r.run_id IN (SELECT run_id FROM runs WHERE suite = ? ORDER BY created_at DESC LIMIT ?)"
        args += [suite, newest]
    conn = connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT m.*, r.created_at, r.branch, r.git_commit FROM runs r JOIN metrics m USING (run_id) "
                        f"WHERE {where} ORDER BY r.created_at", args).fetchall()
    conn.close()
    return [dict(r) for r in rows]


def read_all(db: Path) -> tuple[list[dict], list[tuple]]:
    """Every run (a dict of its `runs` row) and every metric row (METRIC_COLUMNS) of a database, read without
    writing it (a database made before machines were recorded reads
    machine as None); HistoryError naming `db` when it cannot be read."""
    if not Path(db).is_file():
        raise HistoryError(f"no history database at {db}")
    try:
        conn = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot open the history database {db}: {exc}") from None
    try:
        has = {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")} for t in ("runs", "metrics")}
        if not has["runs"] or not has["metrics"]:
            raise HistoryError(f"{db} is not a bench history database (no runs and metrics tables)")
        conn.row_factory = sqlite3.Row
        runs = [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY created_at")]
        conn.row_factory = None
        columns = ", ".join(f"m.{c}" if c != "machine" or "machine" in has["metrics"] else "NULL"
                            for c in METRIC_COLUMNS.split(", "))
        metrics = [tuple(sys.intern(v) if isinstance(v, str) else v for v in row)  # one copy of each name
                   for row in conn.execute(f"SELECT {columns} FROM metrics m")]
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot read the history database {db}: {exc}") from None
    finally:
        conn.close()
    for run in runs:
        run.setdefault("machine", None)
    return runs, metrics


class MemoryHistory:
    """History rows held in memory (the dashboard's: a database's rows and the runs it loaded, without writing
    either), answering what the database answers: the runs, each case's metric over runs, and between_run_sigma's
    question, by the same rule."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}
        self.rows: dict[str, list[tuple]] = {}  # run id -> its metric rows (METRIC_COLUMNS order)
        self._series: dict[tuple[str, str, str, str], list[tuple[float, str, tuple]]] | None = None

    def add(self, run: dict, metrics: list[tuple]) -> None:
        """A run's rows (rows_of's, or read_all's), replacing any of the same run id."""
        self.runs[run["run_id"]] = run
        self.rows[run["run_id"]] = metrics
        self._series = None

    def series(self) -> dict[tuple[str, str, str, str], list[tuple[float, str, tuple]]]:
        """(suite, machine, case, metric) -> [(created_at, run id, metric row)], oldest run first."""
        if self._series is None:
            self._series = {}
            for run_id, rows in self.rows.items():
                run = self.runs[run_id]
                when = run["created_at"] or 0.0
                for row in rows:
                    self._series.setdefault((run["suite"], row[11], row[1], row[6]), []).append((when, run_id, row))
            for points in self._series.values():
                points.sort(key=lambda p: (p[0], p[1]))
        return self._series

    def sigma(self, suite: str, machine: str, case_id: str, metric: str, before: float) -> tuple[float, int] | None:
        """between_run_sigma's answer from these rows."""
        points = self.series().get((suite, machine, case_id, metric), [])
        newest_first: list[float] = []
        for i in reversed(range(bisect.bisect_left(points, before, key=lambda p: p[0]))):
            value = points[i][2][7]
            if value > 0:
                newest_first.append(value)
                if len(newest_first) == HISTORY_RUNS:
                    break
        return log_spread(newest_first)
