"""Runs a suite's cases, each in a fresh child process, and records every outcome.

A case that crashes, is killed (e.g. by the OOM killer) or outlives its timeout is recorded as
failed with the reason and the tail of its output, and the run goes on. Ctrl-C stops the child,
keeps every finished case, and tells how to resume.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from bench.core.process import die_with_parent, log_tail
from bench.measure import quality
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, RawSamples, RegressionSettings, RunMeta
from bench.run import environment, envs
from bench.run.protocol import WorkerResult

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _child_env(case: CaseSpec) -> dict:
    env = dict(os.environ)
    threads = str(case.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        sig = signal.Signals(-returncode)
        hint = " (likely the out-of-memory killer)" if sig == signal.SIGKILL else ""
        return f"worker killed by {sig.name}{hint}"
    return f"worker exited with code {returncode} without writing a result"


def _record(case: CaseSpec, started: float, **fields) -> CaseRecord:
    return CaseRecord(case=case, started_at=started, wall_seconds=time.time() - started, **fields)


def run_case_process(case: CaseSpec, run: RunDir) -> tuple[CaseRecord, RawSamples | None]:
    """Run one case in a child process; return (its record for cases.jsonl, its raw samples or None)."""
    case_file = run.write_case(case)
    result_file, log_file = run.path / "tmp" / f"{case.id}.json", run.log_path(case.id)
    result_file.unlink(missing_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        python = envs.interpreter_path(case.interpreter)
    except envs.MissingEnv as exc:  # recorded as skipped, with the command that creates the env
        return _record(case, started, status="skipped", reason=str(exc)), None
    # absolute paths: the worker (another interpreter, maybe another working directory) finds the run anyway
    command = [python, "-m", "bench.run.worker", str(case_file.resolve()), str(result_file.resolve()),
               str(run.path.resolve())]
    progress = os.dup(sys.stderr.fileno())  # a serving case prints one line per load level here
    with open(log_file, "wb") as log:
        # its own session (a timeout kills its whole process group) that dies with the runner (kill -9 included);
        # the preexec_fn makes one prctl call through a ctypes handle made before the fork: no lock is taken
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=(progress,),
                                 env={**_child_env(case), "BENCH_PROGRESS_FD": str(progress)},
                                 start_new_session=True, preexec_fn=die_with_parent())  # noqa: PLW1509
        os.close(progress)
        try:
            returncode = child.wait(timeout=case.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            returncode = None
        except BaseException:  # Ctrl-C: take the child down with us, record nothing for it
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
    if returncode is None:
        return _record(case, started, status="failed", output_tail=log_tail(log_file),
                       reason=f"timeout: still running after {case.timeout_s:g} s; killed"), None
    if not result_file.exists():
        return _record(case, started, status="failed", reason=_exit_reason(returncode),
                       output_tail=log_tail(log_file)), None
    try:
        result = WorkerResult.model_validate_json(result_file.read_text())
    except ValidationError as exc:
        return _record(case, started, status="failed", output_tail=log_tail(log_file),
                       reason=f"the worker's result file is malformed: {exc}"), None
    samples = result.samples
    record = _record(case, started, **result.model_dump(exclude={"samples"}))
    if record.ok:
        return record, samples
    record.output_tail = log_tail(log_file)
    return record, None


def run_cases(cases: list[CaseSpec], run: RunDir, retry_failed: bool = False) -> list[CaseRecord]:
    """Run every case that has no record yet (and failed ones if retry_failed)."""
    done = {r.id: r for r in run.records()}
    todo = [c for c in cases if c.id not in done or (retry_failed and done[c.id].status == "failed")]
    todo = quality.reference_first(todo)  # the others' perplexity cases read the reference's log-probs
    if len(todo) < len(cases):
        print(f"resuming {run.run_id}: {len(cases) - len(todo)} of {len(cases)} cases already finished",
              file=sys.stderr)
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), unit="case", file=sys.stderr,
               disable=not sys.stderr.isatty(), bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} cases [{elapsed}]")
    try:
        for n, case in enumerate(todo, len(cases) - len(todo) + 1):
            bar.set_description(case.id[:60])
            record, samples = run_case_process(case, run)
            if samples is not None:
                run.write_samples(case.id, samples)
            run.append(record)
            outcome = record.status + (f": {record.reason}" if record.reason else "")
            bar.write(f"[{n}/{len(cases)}] {case.id}: {outcome} ({record.wall_seconds:.1f} s)", file=sys.stderr)
            bar.update()
    finally:
        bar.close()
    return run.records()


def suite_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def start_run(suite_path: Path, snapshot: bytes, suite_name: str, cases: list[CaseSpec], run: RunDir,
              regression: RegressionSettings) -> None:
    """Create the run directory with its metadata and the suite as it runs (`snapshot`: what --resume reads)."""
    run.create(RunMeta(
        run_id=run.run_id, suite_name=suite_name, suite_path=str(suite_path),
        suite_sha256=hashlib.sha256(snapshot).hexdigest(), created_at=time.time(),
        environment=environment.fingerprint(), case_ids=[c.id for c in cases],
        reference=cases[0].reference if cases else None, regression=regression, command=sys.argv, cwd=os.getcwd(),
    ))
    run.suite_snapshot.write_bytes(snapshot)
