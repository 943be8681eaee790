"""What the dashboard shows, gathered once: the runs under --results (read with the one loader,
bench/records `load_run`) and the per-run values of every case (bench/gate/history.py).

The history database given with --history is read (never written) and every loaded run's rows, made with the
history's own `rows_of`, are added to them in memory (bench/gate/history.py `MemoryHistory`, which answers the
gate's between-run noise by the database's rule), so runs that were never recorded and runs whose directories
are long gone (only their medians are in the history) make one series per case.

A year of nights stays fast and small: runs are read one at a time and reduced to what the pages need of them
(a summary: history rows, date, commit, the compare view's environment, each case's backend and machine); a
summary is kept in the dashboard's cache (bench/site/store.py, folder runs/) under the digest of the run's
run.json and cases.jsonl, so an unchanged run is not parsed again; only each suite's newest `keep` runs are kept
at hand (KeptRun), their records read again only when a verdict or the quantization or serving view needs them,
and raw samples only when a verdict is computed (`Run.samples` is lazy).
"""
from __future__ import annotations

import bisect
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BadInput
from bench.gate import history
from bench.metrics import METRICS
from bench.presentation.formatting import fmt
from bench.records import safe_files
from bench.records.rundir import Run, RunDir, load_run
from bench.site.common import machine_label
from bench.site.store import Store

# the metrics a case's trend page plots (when the case has them), in this order
TREND_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes",
                 "perplexity", "delta_ppl", "kld_mean", "top1_agreement",
                 "energy_prefill_j_per_token", "energy_decode_j_per_token")


@dataclass(slots=True)
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
class RunInfo:
    """What the pages need of every loaded run (the records themselves are read again only for the newest)."""

    run_id: str
    suite: str
    created_at: float
    git_sha: str
    environment: dict[str, str]  # the compare view's environment entries (`environment` below)


@dataclass
class CaseInfo:
    """What the overview and trend pages name a case by, from its newest loaded record."""

    backend: str
    machine: str  # the record's machine label (bench/site/common.py machine_label)


class KeptRun:
    """One of a suite's newest runs: its directory, and its records read when a page or a verdict needs them."""

    def __init__(self, info: RunInfo, path: Path, run: Run | None = None) -> None:
        self.info, self.path, self._run = info, path, run

    @property
    def run_id(self) -> str:
        return self.info.run_id

    def load(self) -> Run:
        if self._run is None:
            self._run = load_run(self.path)
        return self._run

    def meta_only(self) -> Run:
        """The run with its metadata and no records (what a rule is read from), without parsing the records."""
        if self._run is not None:
            return self._run
        run_dir = RunDir(self.path.parent, self.path.name)
        return Run(run_dir, run_dir.meta(), [])


@dataclass
class SiteData:
    runs: dict[str, RunInfo]  # every run loaded from --results, by run id
    kept: dict[str, list[KeptRun]]  # per suite, its newest loaded runs, oldest first
    cases: dict[tuple[str, str], CaseInfo]  # (suite, case id) -> from the newest loaded record of the case
    history: history.MemoryHistory  # the --history database's rows and every loaded run's: the gate's noise
    run_rows: dict[str, dict]  # every run the history knows (loaded or not), by run id
    series: list[Series]
    reports: dict[str, Path]  # run id -> its HTML report (bench report), where one exists
    summaries: Store  # the run summaries' cache (its hits: runs not parsed again)

    def ordered_runs(self, suite: str) -> list[KeptRun]:
        """The suite's kept runs (its newest loaded ones), oldest first (by creation time)."""
        return self.kept.get(suite, [])

    def case_info(self, suite: str, case_id: str) -> CaseInfo | None:
        return self.cases.get((suite, case_id))


def newest_with(runs: list[KeptRun], has: Callable[[Run], bool], n: int) -> list[Run]:
    """The newest `n` of `runs` (oldest first) for which `has(run)`, reading runs newest first until found."""
    found: list[Run] = []
    for kept in reversed(runs):
        if len(found) == n:
            break
        run = kept.load()
        if has(run):
            found.insert(0, run)
    return found


SUMMARY_FORMAT = 2
_SITE = Path(__file__).resolve().parent
SUMMARY_SOURCES = (_SITE / "gather.py", _SITE / "common.py", _SITE.parent / "gate" / "history.py",
                   _SITE.parent / "metrics.py", *sorted((_SITE.parent / "records").glob("*.py")))


def _summary_code() -> bytes:
    return b"\0".join(p.read_bytes() for p in SUMMARY_SOURCES if p.is_file())


def _links_leave(path: Path) -> None:
    """UnsafePath when a file a reader of the run opens is a link out of it (run.json and its records are read
    through safe_files; its raw samples are read later, for a verdict, so they are checked here, before the run
    is shown)."""
    samples = path / "samples"
    if samples.is_symlink():
        safe_files.check_inside(samples, path)
    if samples.is_dir():
        for entry in os.scandir(samples):
            if entry.is_symlink():
                safe_files.check_inside(entry.path, path)


def run_dirs(results: Path) -> Iterator[Path]:
    """Every run directory directly under `results` (a directory with run.json); a run directory that is itself
    a symbolic link is skipped with a warning (bench reads a run only from inside the results directory)."""
    for path in sorted(Path(results).iterdir()):
        if not (path / "run.json").exists() and not (path / "run.json").is_symlink():
            continue
        if path.is_symlink():
            print(f"warning: {path}: not shown: the run directory is a symbolic link (-> {os.readlink(path)}); bench "
                  f"reads runs from inside {results} only: copy the run there", file=sys.stderr)
            continue
        yield path


def environment(run: Run) -> dict[str, str]:
    """A run's environment as flat 'what: value' pairs: what the compare view diffs (kept in its summary)."""
    env = run.meta.environment
    out: dict[str, str] = {
        "git sha": env.git_sha or "", "git branch": env.git_branch or "", "git dirty": str(env.git_dirty),
        "python": env.python or "", "platform": env.platform or "", "host": env.hostname or "",
        "CPU": env.cpu_model or "", "CPUs": str(env.cpu_count), "CPU affinity": str(env.cpu_affinity),
        "GPUs": ", ".join(str(g.get("name")) for g in env.gpus) if isinstance(env.gpus, list) else str(env.gpus),
    }
    out.update({f"library {k}": v for k, v in sorted(env.libraries.items())})
    out.update({f"thread env {k}": v for k, v in sorted(env.thread_env.items())})
    threads = sorted({r.case.threads for r in run.records})
    out["case threads"] = ", ".join(map(str, threads))
    machines = {r.machine.machine_id: r.machine for r in run.records if r.machine is not None}
    for machine in machines.values():
        prefix = "machine" if len(machines) == 1 else f"machine {machine.machine_id}"
        out[f"{prefix} id"] = machine.machine_id
        out[f"{prefix} CPU"] = f"{machine.cpu_model} x {machine.cpu_count}"
        out[f"{prefix} memory GiB"] = fmt(machine.memory_bytes / 2**30) if machine.memory_bytes else ""
        out[f"{prefix} GPUs"] = ", ".join(f"{g.get('name')} ({fmt((g.get('memory_total_bytes') or 0) / 2**30)} GiB)"
                                         for g in machine.gpus) or "none"
        out[f"{prefix} GPU driver"] = machine.gpu_driver or ""
        out.update({f"{prefix} library {k}": v for k, v in sorted(machine.libraries.items())})
    return out


def summarize(run: Run) -> dict:
    """What the pages need of a run, a runs/ entry: its history rows (`rows_of`, the metric rows grouped by case),
    commit, the compare view's environment, its cases' backend and machine."""
    row, metrics = history.rows_of(run)
    by_case: dict[tuple, list] = {}
    for (_, case_id, variant, model, task, workload, metric, value, low, high, n, machine) in metrics:
        by_case.setdefault((case_id, variant, model, task, workload, machine), []).append([metric, value, low, high, n])
    return {"row": {k: v for k, v in row.items() if k not in ("recorded_at", "path")},
            "metrics": [[*case, values] for case, values in by_case.items()],
            "git_sha": run.meta.environment.git_sha or "", "environment": environment(run),
            "cases": {r.id: [r.case.backend, machine_label(r)] for r in run.records}}


def metric_rows(run_id: str, summary: dict) -> list[tuple]:
    """The history rows (METRIC_COLUMNS) of a summary."""
    return [(run_id, case_id, variant, model, task, workload, sys.intern(metric), value, low, high, n, machine)
            for case_id, variant, model, task, workload, machine, values in summary["metrics"]
            for metric, value, low, high, n in values]


class Loader:
    """Reads runs for the pages: a run whose run.json and cases.jsonl are unchanged since a build summarized it is
    not parsed again (its summary is in the dashboard's cache, folder runs/); any other is loaded (load_run)."""

    def __init__(self, cache_root: Path | None) -> None:
        self.store = Store(cache_root, "runs", SUMMARY_FORMAT)
        self.code = hashlib.sha256(_summary_code()).digest() if self.store.dir is not None else b""

    def read(self, path: Path) -> tuple[dict, Run | None]:
        """(summary, the loaded run when it had to be loaded); BadInput when the run cannot be shown."""
        _links_leave(path)
        holder = RunDir(path.parent, path.name).writer_now()
        if holder:
            raise BadInput(f"the run is still being written ({holder})")
        key = ""
        if self.store.dir is not None:
            meta, cases = safe_files.read_bytes(path / "run.json", path), b""
            if (path / "cases.jsonl").exists() or (path / "cases.jsonl").is_symlink():
                cases = safe_files.read_bytes(path / "cases.jsonl", path)
            if b'"format_version"' in meta:  # format 1 reads case files too: never summarized from these two alone
                key = hashlib.sha256(b"\0".join([self.code, path.name.encode(), meta, cases])).hexdigest()
                summary = self.store.read(key)
                if summary is not None and {"row", "metrics", "git_sha", "environment", "cases"} <= set(summary):
                    self.store.stats.hits += 1
                    return summary, None
        run = load_run(path)
        summary = summarize(run)
        if key:
            self.store.stats.misses += 1
            self.store.write(key, summary)
        return summary, run


def _keep_newest(kept: list[KeptRun], run: KeptRun, keep: int) -> None:
    """Insert `run` into `kept` (oldest first) and drop the oldest beyond `keep`."""
    order = [(k.info.created_at, k.run_id) for k in kept]
    kept.insert(bisect.bisect(order, (run.info.created_at, run.run_id)), run)
    del kept[:max(0, len(kept) - keep)]


def load(results: Path, memory: history.MemoryHistory, keep: int, loader: Loader):
    """Read every run under `results` once (one at a time), adding its rows to `memory`; damaged ones are skipped
    with a warning, not fatal: one bad run must not take the dashboard down."""
    infos: dict[str, RunInfo] = {}
    kept: dict[str, list[KeptRun]] = {}
    cases: dict[tuple[str, str], tuple[tuple[float, str], CaseInfo]] = {}
    for path in run_dirs(results):
        try:
            summary, run = loader.read(path)
        except BadInput as exc:
            print(f"warning: {path}: not shown: {exc}", file=sys.stderr)
            continue
        row = {**summary["row"], "path": str(path.resolve()), "recorded_at": None}
        memory.add(row, metric_rows(row["run_id"], summary))
        info = RunInfo(row["run_id"], row["suite"], row["created_at"], summary["git_sha"], summary["environment"])
        infos[info.run_id] = info
        when = (info.created_at, info.run_id)
        for case_id, (backend, machine) in summary["cases"].items():
            known = cases.get((info.suite, case_id))
            if known is None or known[0] < when:
                cases[(info.suite, case_id)] = (when, CaseInfo(backend, machine))
        _keep_newest(kept.setdefault(info.suite, []), KeptRun(info, path, run), keep)
    return infos, kept, {key: case for key, (_, case) in cases.items()}


def gather(results: Path | None, history_db: Path | None, reports: Path | None, keep: int = 2,
           cache: Path | None = None) -> SiteData:
    """Everything the pages show; `keep`: how many of each suite's newest runs to keep at hand (at least 2);
    `cache`: the dashboard's cache directory (bench/site/store.py), None for none."""
    memory = history.MemoryHistory()
    infos: dict[str, RunInfo] = {}
    kept: dict[str, list[KeptRun]] = {}
    cases: dict[tuple[str, str], CaseInfo] = {}
    loader = Loader(cache)
    if results is not None and Path(results).is_dir():
        infos, kept, cases = load(results, memory, max(keep, 2), loader)
    if history_db is not None:  # the runs it holds whose directories were not loaded (a loaded one is newer)
        runs, metrics = history.read_all(history_db)
        by_run: dict[str, list[tuple]] = {}
        for m in metrics:
            by_run.setdefault(m[0], []).append(m)
        for row in runs:
            if row["run_id"] not in infos:
                memory.add(row, by_run.get(row["run_id"], []))
    run_rows = dict(sorted(memory.runs.items(), key=lambda kv: (kv[1]["created_at"] or 0, kv[0])))
    found_reports = {}
    if reports is not None:
        for run_id in run_rows:
            path = Path(reports) / run_id / "report.html"
            if path.is_file():
                found_reports[run_id] = path
    return SiteData(infos, kept, cases, memory, run_rows, _series(memory), found_reports, loader.store)


def _series(memory: history.MemoryHistory) -> list[Series]:
    """Every case's TREND_METRICS over runs, one series per machine, oldest run first."""
    wanted = {m for m in TREND_METRICS if m in METRICS}
    out = []
    for (suite, machine, case_id, metric), points in memory.series().items():
        if metric not in wanted:
            continue
        _, _, first = points[0]
        s = Series(suite, machine or "?", case_id, first[2], first[3], first[4], first[5], metric)
        for when, run_id, row in points:
            run = memory.runs[run_id]
            s.points.append(Point(run_id, when, run["git_commit"] or "", run["branch"] or "", row[7], row[8], row[9]))
        out.append(s)
    return sorted(out, key=lambda s: (s.suite, s.case_id, TREND_METRICS.index(s.metric), s.machine))
