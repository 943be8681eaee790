"""Shared fixtures: offline mode, the built-in model, and a helper to run the CLI as a user does."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENCH_DEPRECATIONS_AS_ERRORS", "1")  # worker processes fail on a library's deprecation too

KNOWN_ANSWER = "tests.known_answer_backend:KnownAnswerBackend"


@pytest.fixture(scope="session")
def tiny_llama() -> str:
    """Path of the built-in model (built once, then cached under BENCH_CACHE)."""
    from bench.models import build_builtin

    return str(build_builtin("tiny-llama"))


def load_hf(path: str, **options):
    """An hf-eager backend with `options`, loaded from `path`; the test is skipped if a package is missing."""
    from backends.base import MissingDependency
    from backends.hf.eager import HFEager

    backend = HFEager(HFEager.Options(**options))
    try:
        backend.load(path)
    except MissingDependency as exc:
        pytest.skip(str(exc))
    return backend


def run_bench(*args: str, cwd: Path, timeout: float = 600, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` in `cwd`, as a user would run it; checks the exit code if given."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, check=False,
                          text=True, timeout=timeout)
    if check_exit is not None:
        assert proc.returncode == check_exit, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def write_suite(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def load_records(run_dir: Path) -> list:
    """The typed records of a run directory, as every reader of bench loads them (bench/records)."""
    from bench.records import load_run

    return load_run(run_dir).records


def record_lines(run_dir: Path) -> list:
    """Every line of a run's cases.jsonl as a typed record, in file order, duplicates (retries) included."""
    from bench.records.schema import CaseRecord

    return [CaseRecord.model_validate_json(line) for line in (Path(run_dir) / "cases.jsonl").read_text().splitlines()]


CONTENDED_CPUS = 0.5  # what the runner calls contended (bench/measure/machine.py): others kept half a CPU busy


@contextlib.contextmanager
def others_load() -> Iterator[list[float]]:
    """The CPUs kept busy by processes outside this test's process tree while the block ran (mean over its wall
    time; the list holds it once the block is over). Counts this process and every descendant it (or they) waited
    for. For a test whose timing check no figure can pass under a competing load: it skips, naming the load."""
    import psutil

    def busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def mine() -> float:
        t = psutil.Process().cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    measured: list[float] = []
    began, busy0, mine0 = time.monotonic(), busy(), mine()
    yield measured
    measured.append(max(0.0, (busy() - busy0 - (mine() - mine0)) / max(time.monotonic() - began, 1e-9)))


def skip_if_contended(load: float, what: str) -> None:
    """Skip the rest of a test whose `what` a competing load can flip, naming the load that was measured."""
    import pytest

    if load >= CONTENDED_CPUS:
        pytest.skip(f"other processes kept {load:.1f} CPUs busy while it was measured: {what} needs a quieter machine")


def recorded_load(records) -> float:
    """The busiest load by other processes that the runner measured around any of `records`' latency cases
    (bench/measure/machine.py), in CPUs; 0 when none was measured."""
    return max((r.latency.machine.other_cpu_load_mean for r in records if r.latency and r.latency.machine),
               default=0.0)
