"""Starting a case's worker process: its interpreter, environment, session, its task, and death with the runner.

The worker runs the function registered for the case's task (bench/exec/tasks.py): this module registers
the tasks of this layer's worker (latency, perplexity: bench/run/worker.py) as an import path, so the runner
imports none of the measuring code, and starts the worker with the import path of the case's task.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from bench.core.process import die_with_parent
from bench.exec import envs, tasks
from bench.exec.protocol import RESULT_UNWRITABLE
from bench.records.rundir import RunDir, RunError
from bench.records.schema import CaseSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

for _task in ("latency", "perplexity"):  # the tasks of this layer's worker
    tasks.TASKS.add(_task, "bench.run.worker:run_backend_case")


def child_env(case: CaseSpec) -> dict:
    env = dict(os.environ)
    threads = str(case.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def exit_reason(returncode: int) -> str:
    """Why a worker stopped without a result, for its failed record; RunError (the run stops, exit code 2) when it
    could not write its result file: an I/O error of the harness (a full or read-only disk) is not the case's."""
    if returncode == RESULT_UNWRITABLE:
        raise RunError("a worker could not write its result under the run directory (its log in logs/ names the "
                       "file): the run stops here; finished cases are kept: free the disk, then --resume")
    if returncode < 0:
        sig = signal.Signals(-returncode)
        hint = " (likely the out-of-memory killer)" if sig == signal.SIGKILL else ""
        return f"worker killed by {sig.name}{hint}"
    return f"worker exited with code {returncode} without writing a result"


def spawn_worker(case: CaseSpec, run: RunDir, result_file: Path, log, env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start `python -m bench.run.worker TASK CASE RESULT RUN_DIR` for `case` under its interpreter (MissingEnv if that
    does not exist; UnknownName if no module registered the case's task), TASK the import path of its task's function.

    Its own session (a timeout kills its whole process group), and it dies with this process (kill -9
    included): the preexec_fn makes one prctl call through a ctypes handle made before the fork, no lock.
    Paths are absolute: the worker (another interpreter, maybe another working directory) finds the run."""
    task = tasks.TASKS.path(case.task)
    python = envs.interpreter_path(case.interpreter)
    case_file = run.write_case(case)
    command = [python, "-m", "bench.run.worker", task, str(case_file.resolve()), str(result_file.resolve()),
               str(run.path.resolve())]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds,
                            env={**child_env(case), **(env or {})}, start_new_session=True,
                            preexec_fn=die_with_parent())  # noqa: PLW1509
