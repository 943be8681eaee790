"""Runs a suite's cases in fresh child processes (one per case, or one per variant and process set of an
interleaved unit), and records every outcome.

A case that crashes, is killed (e.g. by the OOM killer) or outlives its timeout is recorded as
failed with the reason and the tail of its output, and the run goes on. Ctrl-C stops the child,
keeps every finished case, and tells how to resume.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from bench.core.process import log_tail
from bench.exec import envs
from bench.records.rundir import RunDir, RunError
from bench.records.schema import (
    CaseRecord,
    CaseSpec,
    ModelOverride,
    RawSamples,
    RegressionSettings,
    RunMeta,
    ShardInfo,
)
from bench.run import environment
from bench.run.handle import Budget, WorkerGone, WorkerProcess
from bench.run.plan import Unit, plan


def _record(case: CaseSpec, started: float, **fields) -> CaseRecord:
    return CaseRecord(case=case, started_at=started, wall_seconds=time.time() - started, **fields)


def run_case_process(case: CaseSpec, run: RunDir) -> tuple[CaseRecord, RawSamples | None]:
    """Run one case in a child process; return (its record for cases.jsonl, its raw samples or None)."""
    log_file = run.log_path(case.id)
    started = time.time()
    with run.open_log(log_file, "wb") as log:
        progress = os.dup(sys.stderr.fileno())  # a serving case prints one line per load level here
        try:
            worker = WorkerProcess.start(case, run, run.path / "tmp" / f"{case.id}.json", log, Budget(case.timeout_s),
                                         env={"BENCH_PROGRESS_FD": str(progress)}, pass_fds=(progress,))
        except envs.MissingEnv as exc:  # recorded as skipped, with the command that creates the env
            return _record(case, started, status="skipped", reason=str(exc)), None
        finally:
            os.close(progress)
        try:
            result = worker.finish()
        except WorkerGone as gone:  # crashed, killed, timed out, failed or skipped: the record says why
            return _record(case, started, **gone.result.outcome(), output_tail=log_tail(log_file)), None
    return _record(case, started, **result.outcome()), result.samples


def run_unit(unit: Unit, run: RunDir) -> Iterator[tuple[CaseRecord, RawSamples | None]]:
    """Run one unit of work into `run` (bench/run/plan.py), yielding each case's record as it finishes,
    stamped with the fingerprint of the machine that ran it."""
    if unit.kind == "interleaved":
        from bench.run.interleave import run_group

        finished: Iterator[tuple[CaseRecord, RawSamples | None]] = run_group(list(unit.cases), run)
    else:
        finished = (run_case_process(case, run) for case in unit.cases)
    for record, samples in finished:
        if record.machine is None:
            record.machine = environment.machine()
        yield record, samples


class Executor(Protocol):
    """Runs units somewhere and hands every finished case back to the one writer, `record`."""

    def run(self, units: list[Unit], run: RunDir,
            record: Callable[[CaseRecord, RawSamples | None], None]) -> None: ...


class LocalExecutor:
    """Units one after another on this machine (the default)."""

    def run(self, units: list[Unit], run: RunDir,
            record: Callable[[CaseRecord, RawSamples | None], None]) -> None:
        for unit in units:
            for case_record, samples in run_unit(unit, run):
                record(case_record, samples)


def todo_cases(cases: list[CaseSpec], run: RunDir, retry_failed: bool = False) -> list[CaseSpec]:
    """The cases that have no record yet in `run` (and the failed ones if retry_failed)."""
    done = {r.id: r for r in run.records()}
    return [c for c in cases if c.id not in done or (retry_failed and done[c.id].status == "failed")]


def run_cases(cases: list[CaseSpec], run: RunDir, retry_failed: bool = False,
              executor: Executor | None = None) -> list[CaseRecord]:
    """Run every case that has no record yet (and failed ones if retry_failed), unit by unit."""
    todo = todo_cases(cases, run, retry_failed)
    if len(todo) < len(cases):
        print(f"resuming {run.run_id}: {len(cases) - len(todo)} of {len(cases)} cases already finished",
              file=sys.stderr)
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), unit="case", file=sys.stderr,
               disable=not sys.stderr.isatty(), bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} cases [{elapsed}]")
    finished = len(cases) - len(todo)

    def record(case_record: CaseRecord, samples: RawSamples | None) -> None:
        nonlocal finished
        if samples is not None:
            run.write_samples(case_record.id, samples)
        run.append(case_record)
        finished += 1
        outcome = case_record.status + (f": {case_record.reason}" if case_record.reason else "")
        bar.write(f"[{finished}/{len(cases)}] {case_record.id}: {outcome} ({case_record.wall_seconds:.1f} s)",
                  file=sys.stderr)
        for warning in case_record.latency.warnings if case_record.latency else []:
            bar.write(f"  warning: {warning}", file=sys.stderr)
        bar.update()

    try:
        (executor or LocalExecutor()).run(plan(todo), run, record)
    except OSError as exc:
        if exc.filename and Path(os.path.abspath(exc.filename)).is_relative_to(os.path.abspath(run.path)):
            raise RunError(f"cannot write {exc.filename}: {exc.strerror or exc}: the run stops here; finished cases "
                           f"are kept: fix it, then python -m bench run --resume {run.run_id}") from None
        raise
    finally:
        bar.close()
    return run.records()


def suite_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def start_run(suite_path: Path, snapshot: bytes, suite_name: str, cases: list[CaseSpec], run: RunDir,
              regression: RegressionSettings, shard: ShardInfo | None = None,
              model_override: ModelOverride | None = None) -> None:
    """Create the run directory with its metadata and the suite as it runs (`snapshot`: what --resume reads);
    `shard`: the run is that shard of the suite (bench/run/shard.py), `cases` its share; `model_override`:
    --model replaced the suite's models."""
    run.create(RunMeta(
        run_id=run.run_id, suite_name=suite_name, suite_path=str(suite_path),
        suite_sha256=hashlib.sha256(snapshot).hexdigest(), created_at=time.time(),
        environment=environment.fingerprint(), case_ids=[c.id for c in cases],
        reference=cases[0].reference if cases else None, regression=regression, command=sys.argv, cwd=os.getcwd(),
        shard=shard, model_override=model_override,
    ), snapshot, hold=True)  # the write lock, kept from creation to the run's writer(): no other run gets in
