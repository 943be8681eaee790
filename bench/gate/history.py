"""Run history: a local SQLite database of finished runs and their per-case medians.

`bench history record RUN_ID` stores the run (branch and commit from its environment fingerprint,
or given), its path, and every metric's median (or scalar) per case. `compare last:BRANCH CURRENT`
takes the last run recorded on BRANCH as its baseline, and reports plot a metric's trend.
Default database: $BENCH_HISTORY_DB, else <results-dir>/history.sqlite.
"""
from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from bench.errors import BadInput
from bench.metrics import METRICS
from bench.records.rundir import Run
from bench.records.schema import CaseRecord, Estimate, Summary

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
    except (OSError, sqlite3.Error) as exc:
        raise HistoryError(f"cannot open the history database {path}: {exc}") from None
    return conn


def record_run(run: Run, db: Path, branch: str | None = None, commit: str | None = None) -> dict:
    """Insert (or replace) a finished run; returns what was stored. A run still being written (its lock held) is
    refused: its medians would be a partial run's, stored as the branch's history."""
    holder = run.dir.writer_now()
    if holder:
        raise HistoryError(f"run '{run.run_id}' is still being written ({holder}): record it once it has finished")
    env = run.meta.environment
    branch = branch or env.git_branch or os.environ.get("GITHUB_REF_NAME") or "unknown"
    commit = commit or env.git_sha or "unknown"
    row = {"run_id": run.run_id, "suite": run.meta.suite_name, "machine": run.machine_of(), "branch": branch,
           "git_commit": commit,
           "dirty": int(bool(env.git_dirty)), "created_at": run.meta.created_at, "recorded_at": time.time(),
           "path": str(run.path.resolve()), "n_cases": len(run.records),
           "n_failed": sum(r.status == "failed" for r in run.records)}
    with connect(db, create=True) as conn:
        conn.execute("DELETE FROM metrics WHERE run_id = ?", (run.run_id,))
        conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     tuple(row.values()))
        for r in run.records:
            if not r.ok:
                continue
            for name in METRICS:
                value = r.metrics.get(name)
                if isinstance(value, Summary):
                    low, high, n = value.ci_low, value.ci_high, value.n
                elif isinstance(value, Estimate):
                    low, high, n = value.ci_low, value.ci_high, 1
                else:
                    low, high, n = None, None, 1
                shown = r.value(name)
                if shown is None:
                    continue
                conn.execute("INSERT INTO metrics (run_id, case_id, variant, model, task, workload, metric, value, "
                             "ci_low, ci_high, n, machine) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                             (run.run_id, r.id, r.variant, r.model, r.task, r.workload.short if r.workload else r.task,
                              name, shown, low, high, n, run.machine_of(r)))
    conn.close()
    return row


HISTORY_RUNS = 20  # the newest runs of a case whose spread estimates its between-run noise
MIN_HISTORY_RUNS = 3


def between_run_sigma(db: Path, suite: str, machine: str, case_id: str, metric: str,
                      before: float) -> tuple[float, int] | None:
    """(standard deviation of the log of the case's per-run medians, runs) over the newest runs of this suite on
    this machine recorded before `before`; None with fewer than MIN_HISTORY_RUNS."""
    conn = connect(db)
    rows = conn.execute(
        "SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.suite = ? AND m.machine = ? AND "
        "m.case_id = ? AND m.metric = ? AND r.created_at < ? AND m.value > 0 ORDER BY r.created_at DESC LIMIT ?",
        (suite, machine, case_id, metric, before, HISTORY_RUNS)).fetchall()
    conn.close()
    if len(rows) < MIN_HISTORY_RUNS:
        return None
    logs = [math.log(v) for (v,) in rows]
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)), len(logs)


def noise_lookup(db: Path, current: Run) -> Callable[[CaseRecord, str], tuple[float, int] | None]:
    """What the gate asks the history: a case's between-run noise, on the current run's machine."""
    def lookup(record: CaseRecord, metric: str) -> tuple[float, int] | None:
        return between_run_sigma(db, current.meta.suite_name, current.machine_of(record), record.id, metric,
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


def trend(db: Path, suite: str, metric: str) -> list[dict]:
    """Per-run values of `metric` for every case of `suite`, oldest run first."""
    conn = connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "SELECT m.*, r.created_at, r.branch, r.git_commit FROM metrics m JOIN runs r USING (run_id) "
        "WHERE r.suite = ? AND m.metric = ? ORDER BY r.created_at", (suite, metric)).fetchall()
    conn.close()
    return [dict(r) for r in rows]
